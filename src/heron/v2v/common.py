"""Pieces every V2V parser shares: the parse error, guest OS families, MAC addresses, and an
XML reader that refuses document type declarations (no entity expansion, no external
entities: an OVF or a Hyper-V export comes from outside the cluster)."""

import re
import xml.parsers.expat
from xml.etree.ElementTree import Element, TreeBuilder

from heron.errors import V2VError
from heron.models.v2v import GuestFamily


class ParseError(V2VError, ValueError):
    """A description that does not parse; the message names the file, line and field."""

    def __init__(
        self, reason: str, *, path: str | None = None, line: int | None = None, field: str = ""
    ) -> None:
        self.reason, self.path, self.line, self.field = reason, path, line, field
        where = ":".join(str(part) for part in (path, line) if part is not None)
        subject = f"{field}: " if field else ""
        super().__init__(f"{where}: {subject}{reason}" if where else f"{subject}{reason}")


_WINDOWS = re.compile(r"^(win|windows|longhorn)", re.IGNORECASE)
# Distributions VMware, OVF tools and Hyper-V name in their guest OS ids.
_LINUX = re.compile(
    r"linux|debian|ubuntu|rhel|redhat|centos|sles|suse|fedora|oracle|asianux|mandr|"
    r"turbolinux|coreos|photon|alma|rocky|amazon|miracle|pardus|kylin|fusionos",
    re.IGNORECASE,
)


def guest_family(os_id: str | None) -> GuestFamily:
    """linux, windows or other, from a guest OS id as VMware, OVF or Hyper-V give it."""
    if not os_id:
        return "other"
    if _WINDOWS.match(os_id) or "windows" in os_id.lower():
        return "windows"
    if _LINUX.search(os_id):
        return "linux"
    return "other"


_MAC = re.compile(r"^[0-9a-f]{12}$")


def normalize_mac(value: str) -> str | None:
    """aa:bb:cc:dd:ee:ff from the spellings sources use (00:50:56:.., 00-15-5D-.., 00155D..),
    None when it is not a MAC address."""
    digits = re.sub(r"[:\-.\s]", "", value.strip()).lower()
    if not _MAC.fullmatch(digits):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def local_name(name: str) -> str:
    """The name without its namespace: {uri}Item, ovf:Item and Item all give Item."""
    return name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


# Each element's line in its document, kept as an attribute no XML name can spell.
LINE = "{heron}line"


def line_of(element: Element | None) -> int | None:
    """The line an element of parse_xml's tree starts on, for errors."""
    if element is None or LINE not in element.attrib:
        return None
    return int(element.attrib[LINE])


def parse_xml(data: bytes | str, path: str | None = None) -> Element:
    """The document's root element, with tags and attribute names stripped of namespaces and
    prefixes (OVF files come with a default namespace, with ovf:/rasd:/vmw: prefixes, and from
    some tools with prefixes never declared), and each element's line kept (line_of).
    Refuses a DOCTYPE, so no entity is ever expanded; errors are ParseErrors naming the
    line."""
    builder = TreeBuilder()
    # No namespace processing: an undeclared prefix is then not an error, and local_name
    # drops whatever prefix a name has.
    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse_doctype(*_: object) -> None:
        raise ParseError(
            "a document type declaration is refused (no entities are expanded)",
            path=path,
            line=parser.CurrentLineNumber,
        )

    def start(name: str, attributes: dict[str, str]) -> None:
        names = {local_name(key): value for key, value in attributes.items()}
        names[LINE] = str(parser.CurrentLineNumber)
        builder.start(local_name(name), names)

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    parser.ExternalEntityRefHandler = refuse_doctype  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = lambda name: builder.end(local_name(name))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as e:
        raise ParseError(
            f"not well-formed XML ({xml.parsers.expat.errors.messages[e.code]})",
            path=path,
            line=e.lineno,
        ) from None
    return builder.close()


def child(element: Element, name: str) -> Element | None:
    """The first child of that local name."""
    return next((c for c in element if c.tag == name), None)


def text(element: Element | None, name: str | None = None) -> str | None:
    """The stripped text of the element (or of its first child `name`), None if absent."""
    if element is not None and name is not None:
        element = child(element, name)
    if element is None or element.text is None:
        return None
    return element.text.strip()


def integer(element: Element | None, path: str | None, field: str) -> int | None:
    """The integer an element holds, None if absent or empty; ParseError naming its line."""
    value = text(element)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ParseError(
            f"not a number: {value!r}", path=path, line=line_of(element), field=field
        ) from None
