"""The NBD protocol's numbers and fixed-size records (doc/proto.md of the NBD project).

What heron-io's server (heron.ardfs.nbd) and the client of QEMU's exports (heron.nbd.client)
speak: fixed newstyle negotiation, simple and structured replies, meta contexts
(base:allocation, QEMU's qemu:dirty-bitmap:NAME). Pure data: no I/O here.
"""

import struct

# -- negotiation -----------------------------------------------------------------------------
NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0
CLIENT_FLAG_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_UNKNOWN = 2**31 + 6
REP_ERR_TOO_BIG = 2**31 + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# -- transmission ----------------------------------------------------------------------------
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 2**15 + 1

STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1
# QEMU's export of a dirty bitmap: status flag 1 marks an extent dirty.
DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"
STATE_DIRTY = 1 << 0

# errno values as the protocol defines them (not the host's, though Linux agrees)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

# -- records ---------------------------------------------------------------------------------
HANDSHAKE = struct.Struct(">8sQH")  # NBDMAGIC, IHAVEOPT, handshake flags
OPTION = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
STRUCTURED_REPLY = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
EXPORT_INFO = struct.Struct(">HQH")  # INFO_EXPORT, size, transmission flags
BLOCK_SIZE_INFO = struct.Struct(">HIII")  # INFO_BLOCK_SIZE, minimum, preferred, maximum
EXTENT = struct.Struct(">II")  # length, status flags
OFFSET = struct.Struct(">Q")  # the offset leading an OFFSET_DATA / OFFSET_HOLE chunk
ERROR_REPLY = struct.Struct(">IH")  # an error chunk: errno, message length

MAX_PAYLOAD = 32 * 1024 * 1024  # the largest request we accept, and advertise
MAX_OPTION = 64 * 1024  # option data beyond this is a broken or hostile client
