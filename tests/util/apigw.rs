//! API Gateway in front of the gateway function: each HTTP request becomes the event
//! API Gateway would send (built from the sample events that ship with
//! aws_lambda_events, in tests/data/), and the function's answer becomes the response.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::lambda::LambdaFunction;

/// Which API Gateway sends the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// An HTTP API (payload format 2.0), on its `$default` route and stage.
    HttpApiV2,
    /// A REST API with a `{proxy+}` resource: payload format 1.0, stage in the path.
    RestV1,
}

impl ApiKind {
    /// The kind a SAM function event type means (`HttpApi`, `Api`).
    pub fn of_sam_event(ty: &str) -> Option<ApiKind> {
        match ty {
            "HttpApi" => Some(ApiKind::HttpApiV2),
            "Api" => Some(ApiKind::RestV1),
            _ => None,
        }
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn query_map(query: &str) -> (Value, Value) {
    let mut single = serde_json::Map::new();
    let mut multi = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        single.insert(k.to_owned(), json!(v));
        multi.entry(k.to_owned()).or_insert_with(|| json!([])).as_array_mut().expect("list").push(json!(v));
    }
    if single.is_empty() {
        (Value::Null, Value::Null)
    } else {
        (Value::Object(single), Value::Object(multi))
    }
}

/// The event for one request.
pub fn event(kind: ApiKind, method: &str, path_and_query: &str, token: Option<&str>, body: Option<&Value>) -> Value {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let body = body.map(|b| json!(b.to_string())).unwrap_or(Value::Null);
    match kind {
        ApiKind::HttpApiV2 => {
            let mut e = fixture("example-apigw-v2-request-no-authorizer.json");
            e["rawPath"] = json!(path);
            e["rawQueryString"] = json!(query);
            let (q, _) = query_map(query);
            e["queryStringParameters"] = q;
            e["requestContext"]["http"]["method"] = json!(method);
            e["requestContext"]["http"]["path"] = json!(path);
            e["headers"]["content-type"] = json!("application/json");
            if let Some(t) = token {
                e["headers"]["authorization"] = json!(format!("Bearer {t}"));
            }
            e["body"] = body;
            e
        }
        ApiKind::RestV1 => {
            let mut e = fixture("example-apigw-request.json");
            e["httpMethod"] = json!(method);
            e["path"] = json!(path);
            e["resource"] = json!("/{proxy+}");
            e["pathParameters"] = json!({ "proxy": path.trim_start_matches('/') });
            let stage = e["requestContext"]["stage"].as_str().unwrap_or("Prod").to_owned();
            e["requestContext"]["path"] = json!(format!("/{stage}{path}"));
            e["requestContext"]["httpMethod"] = json!(method);
            e["requestContext"]["resourcePath"] = json!("/{proxy+}");
            let (q, mq) = query_map(query);
            e["queryStringParameters"] = q;
            e["multiValueQueryStringParameters"] = mq;
            e["headers"]["Content-Type"] = json!("application/json");
            e["multiValueHeaders"]["Content-Type"] = json!(["application/json"]);
            if let Some(t) = token {
                e["headers"]["Authorization"] = json!(format!("Bearer {t}"));
                e["multiValueHeaders"]["Authorization"] = json!([format!("Bearer {t}")]);
            }
            e["body"] = body;
            e
        }
    }
}

/// The API as a client sees it.
#[derive(Clone)]
pub struct Api {
    pub function: Arc<LambdaFunction>,
    pub kind: ApiKind,
}

impl Api {
    /// Status and JSON body (`Null` when the body is not JSON).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let out = self.function.invoke(event(self.kind, method, path, token, body.as_ref())).await.ok();
        let status = out["statusCode"].as_u64().unwrap_or_else(|| panic!("no statusCode in {out}")) as u16;
        assert_ne!(out["isBase64Encoded"], json!(true), "a JSON API answers in text: {out}");
        let body = out["body"].as_str().unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}
