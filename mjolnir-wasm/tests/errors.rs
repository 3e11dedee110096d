//! Failures become real JavaScript errors of the right class, with `name`, `code` and
//! `key` set, as pages see them (`instanceof`, `String(err)`, `err.stack`).

#![cfg(target_arch = "wasm32")]

use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::{ErrorKind, Key};
use mjolnir_wasm::error::{RuntimeError, error_classes};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
// Everything a page could ask of an error, as JSON.
export function inspect(err, classes) {
  const names = Object.keys(classes);
  return JSON.stringify({
    error: err instanceof Error,
    mjolnir: err instanceof classes.MjolnirError,
    instanceOf: names.filter(n => err instanceof classes[n]),
    constructor: names.find(n => err.constructor === classes[n]) ?? null,
    name: err.name,
    code: err.code,
    key: err.key,
    attempts: err.attempts ?? null,
    message: err.message,
    string: String(err),
    stackHead: String(err.stack).split('\n')[0],
    tag: Object.prototype.toString.call(err),
  });
}

// Throws `err` from JavaScript and returns what `catch` received.
export function throw_and_catch(err) {
  try { throw err; } catch (caught) { return caught; }
}

export function describe_classes(classes) {
  return JSON.stringify({
    names: Object.keys(classes),
    frozen: Object.isFrozen(classes),
    allErrors: Object.values(classes).every(c => c.prototype instanceof Error),
    allMjolnir: Object.values(classes).every(c => c === classes.MjolnirError || c.prototype instanceof classes.MjolnirError),
  });
}
"#)]
extern "C" {
    fn inspect(err: &JsValue, classes: &js_sys::Object) -> String;
    fn throw_and_catch(err: &JsValue) -> JsValue;
    fn describe_classes(classes: &js_sys::Object) -> String;
}

fn inspect_error(err: RuntimeError) -> Value {
    let js: JsValue = err.into();
    serde_json::from_str(&inspect(&js, &error_classes())).expect("inspect returns JSON")
}

/// Checks what every Mjölnir error shares, and returns the inspection for the rest.
fn assert_class(err: RuntimeError, class: &str, code: &str, key: Value) -> Value {
    let seen = inspect_error(err);
    assert_eq!(seen["error"], json!(true), "instanceof Error: {seen}");
    assert_eq!(
        seen["mjolnir"],
        json!(true),
        "instanceof MjolnirError: {seen}"
    );
    let expected: Vec<&str> = if class == "MjolnirError" {
        vec!["MjolnirError"]
    } else {
        vec!["MjolnirError", class]
    };
    assert_eq!(seen["instanceOf"], json!(expected), "{seen}");
    assert_eq!(seen["constructor"], json!(class), "{seen}");
    assert_eq!(seen["name"], json!(class), "{seen}");
    assert_eq!(seen["code"], json!(code), "{seen}");
    assert_eq!(seen["key"], key, "{seen}");
    assert_eq!(seen["tag"], json!("[object Error]"), "{seen}");
    let message = seen["message"].as_str().expect("a message").to_owned();
    assert!(!message.is_empty(), "{seen}");
    assert_eq!(
        seen["string"],
        json!(format!("{class}: {message}")),
        "{seen}"
    );
    assert_eq!(
        seen["stackHead"],
        json!(format!("{class}: {message}")),
        "{seen}"
    );
    seen
}

#[wasm_bindgen_test]
fn conflict_is_a_conflict_error_naming_the_key() {
    let seen = assert_class(
        RuntimeError::Conflict {
            key: Key::row("users", "alice"),
            attempts: 5,
        },
        "ConflictError",
        "conflict",
        json!({"kind": "row", "table": "users", "pk": "alice"}),
    );
    assert_eq!(seen["attempts"], json!(5));
    let message = seen["message"].as_str().unwrap();
    assert!(message.contains("5 attempts"), "{message}");
    assert!(message.contains("users[\"alice\"]"), "{message}");
}

#[wasm_bindgen_test]
fn conflict_keys_keep_their_shape() {
    let seen = assert_class(
        RuntimeError::Conflict {
            key: Key::row("todos", 7),
            attempts: 1,
        },
        "ConflictError",
        "conflict",
        json!({"kind": "row", "table": "todos", "pk": 7}),
    );
    assert_eq!(seen["attempts"], json!(1));
    assert_class(
        RuntimeError::Conflict {
            key: Key::kv("motd"),
            attempts: 3,
        },
        "ConflictError",
        "conflict",
        json!({"kind": "kv", "key": "motd"}),
    );
}

#[wasm_bindgen_test]
fn forbidden_is_a_forbidden_error() {
    let reply = ErrorReply::new(ErrorKind::Forbidden, "users may only write their own row")
        .with_key(Key::row("users", "bob"));
    let seen = assert_class(
        RuntimeError::Rejected(reply),
        "ForbiddenError",
        "forbidden",
        json!({"kind": "row", "table": "users", "pk": "bob"}),
    );
    assert_eq!(seen["attempts"], Value::Null);
    let message = seen["message"].as_str().unwrap();
    assert!(
        message.contains("users may only write their own row"),
        "{message}"
    );
}

#[wasm_bindgen_test]
fn constraint_violation_is_a_constraint_error() {
    let reply = ErrorReply::new(ErrorKind::ConstraintViolation, "users_balance_check")
        .with_key(Key::row("users", "alice"));
    assert_class(
        RuntimeError::Rejected(reply),
        "ConstraintError",
        "constraint_violation",
        json!({"kind": "row", "table": "users", "pk": "alice"}),
    );
}

#[wasm_bindgen_test]
fn schema_refusals_are_schema_errors() {
    let kinds = [
        (ErrorKind::UnknownTable, "unknown_table"),
        (ErrorKind::UnknownColumn, "unknown_column"),
        (ErrorKind::WrongType, "wrong_type"),
        (ErrorKind::PrimaryKeyChange, "primary_key_change"),
        (ErrorKind::InvalidWrite, "invalid_write"),
        (ErrorKind::InvalidQuery, "invalid_query"),
        (ErrorKind::NotFound, "not_found"),
    ];
    for (kind, code) in kinds {
        let reply = ErrorReply::new(kind, "refused").with_key(Key::row("users", "carol"));
        assert_class(
            RuntimeError::Rejected(reply),
            "SchemaError",
            code,
            json!({"kind": "row", "table": "users", "pk": "carol"}),
        );
    }
}

#[wasm_bindgen_test]
fn other_refusals_are_plain_mjolnir_errors() {
    let kinds = [
        (ErrorKind::Malformed, "malformed"),
        (ErrorKind::UnknownMessage, "unknown_message"),
        (ErrorKind::ProtocolVersion, "protocol_version"),
        (ErrorKind::Handshake, "handshake"),
        (ErrorKind::Unauthenticated, "unauthenticated"),
        (ErrorKind::TooLarge, "too_large"),
        (ErrorKind::Internal, "internal"),
    ];
    for (kind, code) in kinds {
        // Without a key: `key` is null, not missing.
        assert_class(
            RuntimeError::Rejected(ErrorReply::new(kind, "refused")),
            "MjolnirError",
            code,
            Value::Null,
        );
    }
}

#[wasm_bindgen_test]
fn disconnection_is_a_connection_error() {
    let seen = assert_class(
        RuntimeError::Disconnected("the server closed the connection".to_owned()),
        "ConnectionError",
        "disconnected",
        Value::Null,
    );
    let message = seen["message"].as_str().unwrap();
    assert!(
        message.contains("the server closed the connection"),
        "{message}"
    );
}

#[wasm_bindgen_test]
fn protocol_failure_is_a_protocol_error() {
    assert_class(
        RuntimeError::Protocol("unexpected reply to a commit".to_owned()),
        "ProtocolError",
        "protocol",
        Value::Null,
    );
}

#[wasm_bindgen_test]
fn errors_survive_a_javascript_throw() {
    let err: JsValue = RuntimeError::Disconnected("gone".to_owned()).into();
    let caught = throw_and_catch(&err);
    assert!(js_sys::Object::is(&err, &caught));
    let seen: Value = serde_json::from_str(&inspect(&caught, &error_classes())).unwrap();
    assert_eq!(seen["name"], json!("ConnectionError"));
}

#[wasm_bindgen_test]
fn error_classes_are_exported_once() {
    let classes = error_classes();
    assert!(js_sys::Object::is(&classes, &error_classes()), "one object");
    let seen: Value = serde_json::from_str(&describe_classes(&classes)).unwrap();
    assert_eq!(
        seen,
        json!({
            "names": ["MjolnirError", "ConflictError", "ForbiddenError", "ConstraintError",
                      "SchemaError", "ConnectionError", "ProtocolError"],
            "frozen": true,
            "allErrors": true,
            "allMjolnir": true,
        })
    );
}
