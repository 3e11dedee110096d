//! Between JavaScript values and the core's JSON values and keys.
//!
//! Written out rather than through serde-wasm-bindgen: a walk over the value with one
//! `js_sys` call per node does what that crate's serializer and deserializer did here, and
//! leaves out their generic machinery (measured in docs/client.md, "Shipped size").

use js_sys::{Array, Object, Reflect};
use mjolnir_core::{Key, Pk};
use serde_json::{Map, Number, Value};
use wasm_bindgen::prelude::*;

/// A JSON value as the plain JavaScript value `JSON.parse` would give for its text (objects
/// as objects, not `Map`s; integers beyond 2^53 rounded to the nearest double, as there).
pub fn to_js(value: &Value) -> JsValue {
    match value {
        Value::Null => JsValue::NULL,
        Value::Bool(b) => JsValue::from_bool(*b),
        Value::Number(n) => JsValue::from_f64(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => JsValue::from_str(s),
        Value::Array(items) => items.iter().map(to_js).collect::<Array>().into(),
        Value::Object(map) => {
            let object = Object::new();
            for (name, item) in map {
                let _ = Reflect::set(&object, &JsValue::from_str(name), &to_js(item));
            }
            object.into()
        }
    }
}

/// A key as its wire form parses: `{kind: "row", table, pk}` or `{kind: "kv", key}`.
pub fn key_to_js(key: &Key) -> JsValue {
    serde_json::to_string(key)
        .ok()
        .and_then(|text| js_sys::JSON::parse(&text).ok())
        .unwrap_or(JsValue::NULL)
}

/// A JavaScript value as JSON. `undefined` and `null` become `null`, as do `NaN` and the
/// infinities (as in `JSON.stringify`); a `Map` with string keys becomes an object, and a
/// `BigInt` an integer if it fits 64 bits. Functions, symbols, sets and other iterables are
/// refused with a `TypeError`, since they cannot be stored.
pub fn from_js(value: JsValue) -> Result<Value, JsValue> {
    json_of(&value).map_err(|what| {
        js_sys::TypeError::new(&format!("mjolnir can only store JSON values, not {what}")).into()
    })
}

/// The walk behind [`from_js`]; its error names what could not be stored.
fn json_of(value: &JsValue) -> Result<Value, String> {
    if value.is_null() || value.is_undefined() {
        return Ok(Value::Null);
    }
    if let Some(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Some(f) = value.as_f64() {
        return Ok(if js_sys::Number::is_safe_integer(value) {
            Value::from(f as i64)
        } else {
            Number::from_f64(f).map_or(Value::Null, Value::Number)
        });
    }
    if let Some(s) = value.as_string() {
        return Ok(Value::String(s));
    }
    if value.is_bigint() {
        return match i64::try_from(value.clone()) {
            Ok(n) => Ok(Value::from(n)),
            Err(value) => u64::try_from(value)
                .map(Value::from)
                .map_err(|_| "a BigInt beyond 64 bits".to_owned()),
        };
    }
    if Array::is_array(value) {
        let array: &Array = value.unchecked_ref();
        return array.iter().map(|item| json_of(&item)).collect();
    }
    if let Some(map) = value.dyn_ref::<js_sys::Map>() {
        let mut object = Map::new();
        // `forEach` cannot stop early: the first failure is kept and reported.
        let mut failed: Option<String> = None;
        map.for_each(&mut |item, name| match (name.as_string(), json_of(&item)) {
            (Some(name), Ok(item)) => {
                object.insert(name, item);
            }
            (None, _) => {
                failed.get_or_insert_with(|| "a Map with a key that is not a string".to_owned());
            }
            (_, Err(e)) => {
                failed.get_or_insert(e);
            }
        });
        return failed.map_or(Ok(Value::Object(object)), Err);
    }
    if value.is_object() && !js_sys::Symbol::iterator().js_in(value) {
        let mut object = Map::new();
        for entry in Object::entries(value.unchecked_ref()).iter() {
            let pair: &Array = entry.unchecked_ref();
            let name = pair.get(0).as_string().unwrap_or_default();
            object.insert(name, json_of(&pair.get(1))?);
        }
        return Ok(Value::Object(object));
    }
    Err(if value.is_function() {
        "a function".to_owned()
    } else if value.is_symbol() {
        "a symbol".to_owned()
    } else {
        "an iterable that is not an array".to_owned()
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
