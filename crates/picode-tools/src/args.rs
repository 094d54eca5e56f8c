//! Reading tool arguments out of the model's JSON, with errors the model can act on.

use serde_json::Value;

use crate::ToolError;

/// A required string argument.
pub(crate) fn required_str<'a>(
    tool: &str,
    args: &'a Value,
    key: &str,
) -> Result<&'a str, ToolError> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ToolError::args(
            tool,
            format!("`{key}` must be a string, got {}", type_name(other)),
        )),
        None => Err(ToolError::args(
            tool,
            format!("missing required argument `{key}`"),
        )),
    }
}

/// An optional string argument; `null` counts as absent.
pub(crate) fn optional_str<'a>(
    tool: &str,
    args: &'a Value,
    key: &str,
) -> Result<Option<&'a str>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ToolError::args(
            tool,
            format!("`{key}` must be a string, got {}", type_name(other)),
        )),
    }
}

/// An optional non-negative integer argument. Models sometimes send numbers
/// as strings ("20"), which is accepted since the intent is clear.
pub(crate) fn optional_u64(tool: &str, args: &Value, key: &str) -> Result<Option<u64>, ToolError> {
    let invalid = |v: &Value| {
        ToolError::args(
            tool,
            format!("`{key}` must be a non-negative integer, got {v}"),
        )
    };
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| invalid(v)),
        Some(v @ Value::String(s)) => s.trim().parse().map(Some).map_err(|_| invalid(v)),
        Some(v) => Err(invalid(v)),
    }
}

/// An optional boolean argument (also accepting "true"/"false" strings).
pub(crate) fn optional_bool(tool: &str, args: &Value, key: &str) -> Result<bool, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(v) => Err(ToolError::args(
            tool,
            format!("`{key}` must be a boolean, got {v}"),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
