// The API's OpenAPI schema drives the create and edit forms: a field added to a request model
// appears in the form that sends it, with the model's type, bounds and default, and needs
// only its label in the dictionaries (`field.<path>`; an optional hint `hint.<path>` and
// option labels `enum.<path>.<value>`). Validation stays the API's: the form shows its
// field and reason next to the input.
import { ref, type Ref } from "vue";
import { API, ApiError, get } from "./api";

export interface JsonSchema {
  type?: string;
  title?: string;
  description?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  anyOf?: JsonSchema[];
  $ref?: string;
  enum?: (string | number)[];
  items?: JsonSchema;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  /** Text whose lines matter (cloud-init user-data): a text area, not a one-line input. */
  "x-multiline"?: boolean;
}

interface OpenApi {
  paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: JsonSchema }> } }>>;
  components: { schemas: Record<string, JsonSchema> };
}

export type FieldKind = "boolean" | "integer" | "number" | "string" | "enum" | "list" | "object";

/** One input of a form, at `path` ("drs.threshold") in the request body. */
export interface Field {
  name: string;
  path: string;
  kind: FieldKind;
  nullable: boolean;
  required: boolean;
  default: unknown;
  options: (string | number)[];
  min?: number;
  max?: number;
  maxLength?: number;
  multiline: boolean;
  /** An object's fields, or those of each item of a list of objects. */
  children: Field[];
}

let loading: Promise<OpenApi> | null = null;

export function openapi(): Promise<OpenApi> {
  loading ??= get<OpenApi>("/openapi.json").catch((error: unknown) => {
    loading = null; // try again next time
    throw error;
  });
  return loading;
}

function deref(schema: JsonSchema, api: OpenApi): JsonSchema {
  let found = schema;
  while (found.$ref) found = api.components.schemas[found.$ref.split("/").pop() ?? ""];
  return found;
}

function field(name: string, path: string, raw: JsonSchema, required: boolean, api: OpenApi): Field {
  const choices = (raw.anyOf ?? [raw]).map((s) => deref(s, api));
  const nullable = choices.some((s) => s.type === "null");
  const schema = choices.find((s) => s.type !== "null") ?? {};
  const kind: FieldKind = schema.enum
    ? "enum"
    : schema.properties
      ? "object"
      : schema.type === "array"
        ? "list"
        : ((schema.type ?? "string") as FieldKind);
  const exclusive = schema.exclusiveMinimum !== undefined;
  // A list of models (a subnet's address ranges) is edited item by item, each with its fields.
  const item = kind === "list" && schema.items ? deref(schema.items, api) : undefined;
  return {
    name,
    path,
    kind,
    nullable,
    required,
    default: raw.default ?? schema.default,
    options: schema.enum ?? [],
    min: schema.minimum ?? (exclusive ? schema.exclusiveMinimum : undefined),
    max: schema.maximum ?? schema.exclusiveMaximum,
    maxLength: schema.maxLength,
    multiline: Boolean(raw["x-multiline"] ?? schema["x-multiline"]),
    children: kind === "object" ? fieldsOf(schema, path, api) : item?.properties ? fieldsOf(item, path, api) : [],
  };
}

function fieldsOf(schema: JsonSchema, prefix: string, api: OpenApi): Field[] {
  const required = new Set(schema.required ?? []);
  return Object.entries(schema.properties ?? {}).map(([name, raw]) =>
    field(name, prefix ? `${prefix}.${name}` : name, raw, required.has(name), api),
  );
}

/** The fields of an operation's JSON body, e.g. `operationFields("PATCH /vms/{ref}")`; their
 * paths (and so their dictionary keys) start with `prefix` when one is given. */
export async function operationFields(op: string, prefix = ""): Promise<Field[]> {
  const api = await openapi();
  const [method, path] = op.split(" ");
  const body = api.paths[API + path]?.[method.toLowerCase()]?.requestBody;
  const schema = body?.content["application/json"]?.schema;
  if (!schema) throw new Error(`the API has no JSON body for ${op}`);
  // An optional body is "the model, or null": its fields are the model's.
  const model = (schema.anyOf ?? [schema]).map((s) => deref(s, api)).find((s) => s.type !== "null");
  return fieldsOf(model ?? {}, prefix, api);
}

/** The fields of one model of the schema by its name (a member of a union, such as a
 * channel's `WebhookSettings`, which a form shows once its kind is chosen). */
export async function modelFields(name: string, prefix = ""): Promise<Field[]> {
  const api = await openapi();
  const model = api.components.schemas[name];
  if (!model) throw new Error(`the API has no model ${name}`);
  return fieldsOf(model, prefix, api);
}

/** The fields of `op`, loaded once the view mounts; `only` picks and orders them. */
export function useFields(
  op: string,
  only?: string[],
  prefix = "",
): { fields: Ref<Field[]>; error: Ref<unknown> } {
  const fields = ref<Field[]>([]);
  const error = ref<unknown>(null);
  operationFields(op, prefix)
    .then((all) => {
      fields.value = only
        ? only.map((name) => all.find((f) => f.name === name)).filter((f): f is Field => !!f)
        : all;
    })
    .catch((failure: unknown) => {
      error.value = failure;
    });
  return { fields, error };
}

/** A value with every field at its schema default (objects filled in, nullable ones null). */
export function defaults(fields: Field[]): Record<string, unknown> {
  return Object.fromEntries(
    fields.map((f) => [
      f.name,
      f.kind === "object" && !f.nullable
        ? defaults(f.children)
        : // A list made by a default factory has no default in the schema: empty.
          (f.default ?? (f.kind === "list" && !f.nullable ? [] : null)),
    ]),
  );
}

/** The API's reasons by field path ("body.drs.threshold" → "drs.threshold"; with a prefix
 * "rule": "rule.drs.threshold", as fields made with that prefix are labelled). */
export function fieldErrors(error: unknown, prefix = ""): Record<string, string> {
  if (!(error instanceof ApiError)) return {};
  return Object.fromEntries(
    error.fields.map((f) => {
      const path = f.field.replace(/^body\.?/, "");
      return [prefix ? (path ? `${prefix}.${path}` : prefix) : path, f.reason];
    }),
  );
}

/** What a form sends (SchemaDialog's `build`): the request's body, or the reasons by field
 * path that it cannot be sent yet (what only the form can tell, such as text it parses). */
export type Built = { body: Record<string, unknown> } | { invalid: Record<string, string> };
