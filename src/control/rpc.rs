//! JSON-RPC 2.0 framing: one request per line in, one response per line out.
//!
//! Only single requests with object params are accepted (no batches). A
//! request without `id` is a notification: it runs but gets no reply.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::ControlError;

/// Longest request line accepted, newline excluded.
pub const MAX_LINE: usize = 1 << 20;

/// A parsed request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Request id; `None` for a notification.
    pub id: Option<Value>,
    /// Method name.
    pub method: String,
    /// Parameters (always an object; `{}` when absent).
    pub params: Value,
}

/// Parses one request line. On error returns the id to answer with
/// (`null` when it could not be read) and the error.
pub fn parse_request(line: &[u8]) -> Result<Request, (Value, ControlError)> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| (Value::Null, ControlError::Parse(e.to_string())))?;
    let Value::Object(mut obj) = value else {
        let what = if value.is_array() {
            "batch requests are not supported"
        } else {
            "a request must be a JSON object"
        };
        return Err((Value::Null, ControlError::InvalidRequest(what.into())));
    };
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => {
            return Err((
                Value::Null,
                ControlError::InvalidRequest("id must be a string, a number or null".into()),
            ))
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    let invalid = |m: &str| (reply_id.clone(), ControlError::InvalidRequest(m.into()));
    if obj.remove("jsonrpc") != Some(Value::String("2.0".into())) {
        return Err(invalid("jsonrpc must be \"2.0\""));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err(invalid("method must be a string")),
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(Value::Array(_)) => {
            return Err((
                reply_id,
                ControlError::InvalidParams("params must be an object, not an array".into()),
            ))
        }
        Some(_) => return Err(invalid("params must be an object")),
    };
    if let Some(key) = obj.keys().next() {
        return Err(invalid(&format!("unknown member {key:?}")));
    }
    Ok(Request { id, method, params })
}

/// A success response line (no newline).
pub fn success(id: Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

/// An error response line (no newline).
pub fn failure(id: Value, error: &ControlError) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": error.code(), "message": error.to_string()},
    })
    .to_string()
}

/// A request as the client sends it.
#[derive(Debug, Serialize)]
pub struct OutgoingRequest<'a, P> {
    /// Always "2.0".
    pub jsonrpc: &'static str,
    /// Request id.
    pub id: u64,
    /// Method name.
    pub method: &'a str,
    /// Parameters.
    pub params: P,
}

impl<'a, P: Serialize> OutgoingRequest<'a, P> {
    /// Request 1 of `method(params)`.
    pub fn new(method: &'a str, params: P) -> Self {
        OutgoingRequest {
            jsonrpc: "2.0",
            id: 1,
            method,
            params,
        }
    }
}

/// A response as the client reads it: a result or an error.
#[derive(Debug, Deserialize)]
pub struct Response {
    /// The result, on success.
    #[serde(default)]
    pub result: Option<Value>,
    /// The error, on failure.
    #[serde(default)]
    pub error: Option<ErrorObject>,
}

/// The `error` member of a response.
#[derive(Debug, Deserialize)]
pub struct ErrorObject {
    /// JSON-RPC error code (0 when missing).
    #[serde(default)]
    pub code: i64,
    /// Message (a placeholder when missing).
    #[serde(default = "unknown_error")]
    pub message: String,
}

fn unknown_error() -> String {
    "unknown error".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> i64 {
        parse_request(line.as_bytes()).unwrap_err().1.code()
    }

    #[test]
    fn well_formed_request_parses_with_default_params() {
        let r = parse_request(br#"{"jsonrpc":"2.0","id":7,"method":"status"}"#).unwrap();
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.method, "status");
        assert_eq!(r.params, json!({}));
    }

    #[test]
    fn notification_has_no_id() {
        let r = parse_request(br#"{"jsonrpc":"2.0","method":"x","params":{}}"#).unwrap();
        assert_eq!(r.id, None);
    }

    #[test]
    fn malformed_requests_get_standard_codes() {
        assert_eq!(code("{not json"), -32700);
        assert_eq!(code("[]"), -32600);
        assert_eq!(code("3"), -32600);
        assert_eq!(code(r#"{"id":1,"method":"status"}"#), -32600);
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","id":1,"method":"status"}"#),
            -32600
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":5}"#), -32600);
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":{},"method":"s"}"#), -32600);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"s","params":[1]}"#),
            -32602
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"s","extra":1}"#),
            -32600
        );
    }

    #[test]
    fn error_reply_keeps_the_request_id() {
        let (id, e) = parse_request(br#"{"jsonrpc":"2.0","id":"a","method":7}"#).unwrap_err();
        let reply: Value = serde_json::from_str(&failure(id, &e)).unwrap();
        assert_eq!(reply["id"], "a");
        assert_eq!(reply["error"]["code"], -32600);
    }
}
