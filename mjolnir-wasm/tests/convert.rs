//! JavaScript values to JSON and back (`convert.rs`), as handlers store them: what is kept,
//! what becomes `null`, and what is refused with a `TypeError` (nothing is stored then).

#![cfg(target_arch = "wasm32")]

use mjolnir_core::Key;
use mjolnir_wasm::convert::{from_js, key_to_js, to_js};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
export function sample(name) {
  switch (name) {
    case 'nested': return { a: 1, b: [true, null, 'x', { c: -2.5 }], d: {} , e: undefined };
    case 'numbers': return [0, -0, 2 ** 53 - 1, 2 ** 53, 0.1, NaN, Infinity, -Infinity, 1e300];
    case 'bigints': return [2n ** 62n, -(2n ** 63n), 2n ** 64n - 1n];
    case 'map': return new Map([['x', 1], ['y', [2]]]);
    case 'date': return new Date(0);
    case 'function': return { f() {} };
    case 'symbol': return [Symbol('s')];
    case 'set': return new Set([1]);
    case 'huge bigint': return 2n ** 64n;
    case 'map with a number key': return new Map([[1, 'one']]);
  }
}
export function describe(value) {
  return JSON.stringify(value, (k, v) => (Object.is(v, -0) ? '-0' : v));
}
export function is_plain_object(value) {
  return Object.getPrototypeOf(value) === Object.prototype;
}
"#)]
extern "C" {
    fn sample(name: &str) -> JsValue;
    fn describe(value: &JsValue) -> String;
    fn is_plain_object(value: &JsValue) -> bool;
}

fn json(name: &str) -> Result<Value, String> {
    from_js(sample(name)).map_err(|e| {
        let e: js_sys::Error = e.unchecked_into();
        format!("{}: {}", e.name(), e.message())
    })
}

#[wasm_bindgen_test]
fn plain_values_are_stored_as_their_json() {
    assert_eq!(
        json("nested"),
        Ok(json!({"a": 1, "b": [true, null, "x", {"c": -2.5}], "d": {}, "e": null}))
    );
    assert_eq!(json("map"), Ok(json!({"x": 1, "y": [2]})));
    // A Date has no own enumerable properties.
    assert_eq!(json("date"), Ok(json!({})));
}

#[wasm_bindgen_test]
fn numbers_keep_integers_exact_and_lose_what_json_cannot_hold() {
    assert_eq!(
        json("numbers"),
        Ok(json!([
            0,
            0,
            9007199254740991_i64,
            9007199254740992.0,
            0.1,
            null,
            null,
            null,
            1e300
        ]))
    );
    assert_eq!(
        json("bigints"),
        Ok(json!([4611686018427387904_i64, i64::MIN, u64::MAX]))
    );
}

#[wasm_bindgen_test]
fn what_is_not_json_is_refused_with_a_type_error() {
    for (name, what) in [
        ("function", "a function"),
        ("symbol", "a symbol"),
        ("set", "an iterable that is not an array"),
        ("huge bigint", "a BigInt beyond 64 bits"),
        (
            "map with a number key",
            "a Map with a key that is not a string",
        ),
    ] {
        assert_eq!(
            json(name),
            Err(format!(
                "TypeError: mjolnir can only store JSON values, not {what}"
            )),
            "{name}"
        );
    }
}

#[wasm_bindgen_test]
fn json_becomes_plain_javascript() {
    let value =
        json!({"a": [1, 2.5, "s", null, false], "b": {"c": {}}, "big": 9007199254740993_u64});
    let js = to_js(&value);
    assert!(is_plain_object(&js));
    assert_eq!(
        describe(&js),
        r#"{"a":[1,2.5,"s",null,false],"b":{"c":{}},"big":9007199254740992}"#
    );
    assert_eq!(
        from_js(to_js(&json!({"a": [1, {"b": "c"}]}))).ok(),
        Some(json!({"a": [1, {"b": "c"}]}))
    );
    assert_eq!(
        describe(&key_to_js(&Key::row("users", "alice"))),
        r#"{"kind":"row","table":"users","pk":"alice"}"#
    );
    assert_eq!(
        describe(&key_to_js(&Key::kv("motd"))),
        r#"{"kind":"kv","key":"motd"}"#
    );
}
