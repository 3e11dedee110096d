//! Between JavaScript values and the core's JSON values and keys.

use mjolnir_core::{Key, Pk};
use serde::Serialize;
use serde_json::Value;
use wasm_bindgen::prelude::*;

/// A JSON value as a plain JavaScript value (objects as objects, not `Map`s).
pub fn to_js(value: &impl Serialize) -> JsValue {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or(JsValue::UNDEFINED)
}

/// A JavaScript value as JSON. `undefined` becomes `null`; functions and symbols are
/// refused, since they cannot be stored.
pub fn from_js(value: JsValue) -> Result<Value, JsValue> {
    if value.is_undefined() {
        return Ok(Value::Null);
    }
    serde_wasm_bindgen::from_value(value).map_err(|e| {
        js_sys::TypeError::new(&format!("mjolnir can only store JSON values: {e}")).into()
    })
}

/// A primary key from JavaScript: a string or an integer.
pub fn pk_from_js(value: &JsValue) -> Result<Pk, JsValue> {
    if let Some(s) = value.as_string() {
        return Ok(Pk::Text(s));
    }
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_991.0 => Ok(Pk::Int(n as i64)),
        _ => Err(js_sys::TypeError::new("a primary key is a string or an integer").into()),
    }
}

pub fn row_key(table: &str, pk: &JsValue) -> Result<Key, JsValue> {
    Ok(Key::row(table, pk_from_js(pk)?))
}

/// The descriptor of a plain data property holding `value`, for proxies' traps.
pub fn data_descriptor(value: &JsValue) -> JsValue {
    let d = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&d, &"value".into(), value);
    for flag in ["writable", "enumerable", "configurable"] {
        let _ = js_sys::Reflect::set(&d, &flag.into(), &JsValue::TRUE);
    }
    d.into()
}
