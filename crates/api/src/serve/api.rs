//! One table of operations builds both the router and the OpenAPI 3.1
//! document, so the document cannot leave out an endpoint, a parameter, a
//! body, a response or an error the router serves. Schemas come from the
//! Rust types themselves (schemars, JSON Schema 2020-12, which is OpenAPI
//! 3.1's dialect).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::State;
use crate::keys::Role;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key (health, the document, the docs).
    Public,
    /// A key of this role or a stronger one (admin > operator > approver > viewer).
    Role(Role),
}

/// Where a parameter goes.
#[derive(Debug, Clone, Copy)]
pub enum In {
    /// In the path.
    Path,
    /// A header.
    Header,
}

/// A response an operation gives.
pub struct Reply {
    status: u16,
    description: &'static str,
    content: Vec<(&'static str, Value)>,
    headers: Vec<(&'static str, &'static str)>,
    links: Vec<(&'static str, Value)>,
}

/// One operation of the API.
pub struct Op {
    method: Method,
    path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    access: Access,
    params: Vec<Value>,
    body: Option<(bool, Vec<(&'static str, Value)>)>,
    replies: Vec<Reply>,
    errors: Vec<(u16, &'static str)>,
}

/// Each operation's access, by method and path template.
pub type AccessMap = HashMap<(Method, &'static str), Access>;

/// What [`Api::finish`] gives: the router, the OpenAPI document, the access map.
pub type Finished = (Router<Arc<State>>, Value, AccessMap);

/// The registry of operations.
pub struct Api {
    routes: BTreeMap<&'static str, MethodRouter<Arc<State>>>,
    ops: Vec<Op>,
    requests: SchemaGenerator,
    responses: SchemaGenerator,
    /// (method, path template) → access.
    pub access: AccessMap,
}

fn generator(contract: Contract) -> SchemaGenerator {
    let mut s = SchemaSettings::draft2020_12();
    s.definitions_path = "/components/schemas".into();
    s.meta_schema = None;
    s.contract = contract;
    // Every subschema an object (`items: true` → `{}`): JSON Schema 2020-12
    // allows booleans, but client generators (openapi-python-client,
    // openapi-generator) read only objects; `additionalProperties` keeps its
    // boolean, which they all read.
    let mut objects = schemars::transform::ReplaceBoolSchemas::default();
    objects.skip_additional_properties = true;
    s.transforms.push(Box::new(objects));
    s.into_generator()
}

impl Default for Api {
    fn default() -> Self {
        Api {
            routes: BTreeMap::new(),
            ops: Vec::new(),
            requests: generator(Contract::Deserialize),
            responses: generator(Contract::Serialize),
            access: HashMap::new(),
        }
    }
}

/// Starts an operation.
pub fn op(method: Method, path: &'static str, id: &'static str, tag: &'static str, summary: &'static str) -> Op {
    Op {
        method,
        path,
        id,
        tag,
        summary,
        description: "",
        access: Access::Public,
        params: Vec::new(),
        body: None,
        replies: Vec::new(),
        errors: Vec::new(),
    }
}

impl Op {
    /// A longer description (CommonMark).
    pub fn describe(mut self, d: &'static str) -> Self {
        self.description = d;
        self
    }

    /// Requires a key of `role` or stronger.
    pub fn role(mut self, role: Role) -> Self {
        self.access = Access::Role(role);
        self
    }

    /// A path, query or header parameter with a schema.
    pub fn param(
        mut self,
        at: In,
        name: &'static str,
        required: bool,
        description: &'static str,
        schema: Value,
    ) -> Self {
        let place = match at {
            In::Path => "path",
            In::Header => "header",
        };
        self.params.push(json!({
            "name": name, "in": place, "required": required || matches!(at, In::Path),
            "description": description, "schema": schema,
        }));
        self
    }

    /// A path parameter that is a string.
    pub fn path_param(self, name: &'static str, description: &'static str) -> Self {
        self.param(In::Path, name, true, description, json!({"type": "string", "minLength": 1}))
    }

    /// A path parameter that is a UUID.
    pub fn id_param(self, name: &'static str, description: &'static str) -> Self {
        self.param(In::Path, name, true, description, json!({"type": "string", "format": "uuid"}))
    }

    /// The query string is `Q`'s fields.
    pub fn query<Q: JsonSchema>(mut self, api: &mut Api) -> Self {
        let schema = api.requests.root_schema_for::<Q>();
        let v = schema.as_value();
        let required: Vec<&str> = v
            .get("required")
            .and_then(Value::as_array)
            .map_or_else(Vec::new, |r| r.iter().filter_map(Value::as_str).collect());
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (name, s) in props {
                let mut s = s.clone();
                let description = s.as_object_mut().and_then(|o| o.remove("description")).unwrap_or(json!(""));
                self.params.push(json!({
                    "name": name, "in": "query", "required": required.contains(&name.as_str()),
                    "description": description, "schema": s,
                }));
            }
        }
        self
    }

    /// A JSON body of type `B`.
    pub fn json_body<B: JsonSchema>(mut self, api: &mut Api) -> Self {
        let s = api.requests.subschema_for::<B>().to_value();
        self.body = Some((true, vec![("application/json", s)]));
        self
    }

    /// An optional JSON body of type `B`.
    pub fn optional_json_body<B: JsonSchema>(mut self, api: &mut Api) -> Self {
        let s = api.requests.subschema_for::<B>().to_value();
        self.body = Some((false, vec![("application/json", s)]));
        self
    }

    /// A body in one of several media types, each with its schema.
    pub fn body(mut self, content: Vec<(&'static str, Value)>) -> Self {
        self.body = Some((true, content));
        self
    }

    /// A JSON response of type `R`.
    pub fn ok<R: JsonSchema>(mut self, api: &mut Api, status: u16, description: &'static str) -> Self {
        let s = api.responses.subschema_for::<R>().to_value();
        self.replies.push(Reply {
            status,
            description,
            content: vec![("application/json", s)],
            headers: Vec::new(),
            links: Vec::new(),
        });
        self
    }

    /// A response with other media types.
    pub fn reply(mut self, status: u16, description: &'static str, content: Vec<(&'static str, Value)>) -> Self {
        self.replies.push(Reply { status, description, content, headers: Vec::new(), links: Vec::new() });
        self
    }

    /// A header on the last response.
    pub fn header(mut self, name: &'static str, description: &'static str) -> Self {
        if let Some(r) = self.replies.last_mut() {
            r.headers.push((name, description));
        }
        self
    }

    /// An OpenAPI link from the last response to another operation, each
    /// of whose `params` comes from a runtime expression.
    pub fn link(
        mut self,
        name: &'static str,
        operation: &'static str,
        params: &[(&'static str, &'static str)],
    ) -> Self {
        if let Some(r) = self.replies.last_mut() {
            let p: Map<String, Value> = params.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
            r.links.push((name, json!({ "operationId": operation, "parameters": p })));
        }
        self
    }

    /// A problem+json error this operation can give, beyond the common ones.
    pub fn error(mut self, status: u16, when: &'static str) -> Self {
        self.errors.push((status, when));
        self
    }
}

impl Api {
    /// Adds an operation served by `handler`.
    pub fn add<H, T>(&mut self, op: Op, handler: H)
    where
        H: Handler<T, Arc<State>>,
        T: 'static,
    {
        let filter = match op.method {
            Method::GET => MethodFilter::GET,
            Method::POST => MethodFilter::POST,
            Method::PUT => MethodFilter::PUT,
            Method::DELETE => MethodFilter::DELETE,
            Method::PATCH => MethodFilter::PATCH,
            _ => MethodFilter::GET,
        };
        let r = self.routes.remove(op.path).unwrap_or_default();
        self.routes.insert(op.path, r.on(filter, handler));
        self.access.insert((op.method.clone(), op.path), op.access);
        if op.method == Method::GET {
            self.access.insert((Method::HEAD, op.path), op.access);
        }
        self.ops.push(op);
    }

    /// The router and the OpenAPI document.
    pub fn finish(mut self) -> Finished {
        let problem = self.responses.subschema_for::<super::problem::Problem>().to_value();
        let mut router = Router::new();
        for (path, r) in std::mem::take(&mut self.routes) {
            router = router.route(path, r);
        }
        let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        let mut tags: Vec<&str> = Vec::new();
        for op in &self.ops {
            if !tags.contains(&op.tag) {
                tags.push(op.tag);
            }
            let mut responses = Map::new();
            for r in &op.replies {
                let mut resp = json!({ "description": r.description });
                if !r.content.is_empty() {
                    let content: Map<String, Value> =
                        r.content.iter().map(|(m, s)| ((*m).to_owned(), json!({ "schema": s }))).collect();
                    resp["content"] = Value::Object(content);
                }
                if !r.headers.is_empty() {
                    let h: Map<String, Value> = r
                        .headers
                        .iter()
                        .map(|(n, d)| ((*n).to_owned(), json!({"description": d, "schema": {"type": "string"}})))
                        .collect();
                    resp["headers"] = Value::Object(h);
                }
                if !r.links.is_empty() {
                    let l: Map<String, Value> = r.links.iter().map(|(n, v)| ((*n).to_owned(), v.clone())).collect();
                    resp["links"] = Value::Object(l);
                }
                responses.insert(r.status.to_string(), resp);
            }
            let mut errors: Vec<(u16, &str)> = op.errors.clone();
            if op.body.is_some() || !op.params.is_empty() {
                errors.push((400, "The request could not be read: malformed JSON, a bad parameter."));
            }
            if op.body.is_some() {
                errors.push((413, "The body is larger than the server's limit (`--max-body-bytes`)."));
                errors.push((415, "The body's media type is not one this operation takes."));
                errors.push((422, "The body is well-formed but not acceptable; `errors` lists every problem."));
            }
            if let Access::Role(_) = op.access {
                errors.push((401, "No key, or a key that is unknown or revoked."));
                errors.push((403, "The key's role may not do this."));
                errors.push((
                    429,
                    "Too many requests without a valid key from this address within a minute (`--max-key-failures`); see `Retry-After`.",
                ));
            }
            errors.push((500, "The server failed; the problem names the request id to look up in the logs."));
            errors.push((
                503,
                "The request took longer than the server's limit (`--request-timeout`), or the event store failed.",
            ));
            errors.sort_by_key(|e| e.0);
            let mut seen: HashMap<u16, Vec<&str>> = HashMap::new();
            for (s, w) in errors {
                seen.entry(s).or_default().push(w);
            }
            let mut statuses: Vec<_> = seen.into_iter().collect();
            statuses.sort_by_key(|s| s.0);
            for (s, whens) in statuses {
                responses.entry(s.to_string()).or_insert_with(|| {
                    json!({
                        "description": whens.join(" "),
                        "content": { "application/problem+json": { "schema": problem } },
                    })
                });
            }
            let mut o = json!({
                "operationId": op.id,
                "tags": [op.tag],
                "summary": op.summary,
                "responses": responses,
            });
            if !op.description.is_empty() {
                o["description"] = json!(op.description);
            }
            if !op.params.is_empty() {
                o["parameters"] = Value::Array(op.params.clone());
            }
            if let Some((required, content)) = &op.body {
                let c: Map<String, Value> =
                    content.iter().map(|(m, s)| ((*m).to_owned(), json!({ "schema": s }))).collect();
                o["requestBody"] = json!({ "required": required, "content": c });
            }
            match op.access {
                Access::Public => o["security"] = json!([]),
                Access::Role(r) => {
                    o["security"] = json!([{ "apiKey": [] }]);
                    o["x-cairn-role"] = json!(r.name());
                }
            }
            paths.entry(op.path).or_default().insert(op.method.as_str().to_lowercase(), o);
        }
        let mut schemas = self.requests.take_definitions(true);
        for (k, v) in self.responses.take_definitions(true) {
            schemas.entry(k).or_insert(v);
        }
        let doc = json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Cairn",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "The HTTP API of Cairn, a durable, event-sourced workflow engine. \
                    Every error is `application/problem+json`. Send an API key as \
                    `Authorization: Bearer cairn_…` (`cairn keys create`).",
                "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
            },
            "tags": tags.iter().map(|t| json!({"name": t})).collect::<Vec<_>>(),
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "apiKey": {
                        "type": "http", "scheme": "bearer", "bearerFormat": "cairn API key",
                        "description": "A key from `cairn keys create --name N --role admin|operator|approver|viewer`.",
                    }
                }
            },
            "security": [{ "apiKey": [] }],
        });
        (router, doc, self.access)
    }
}
