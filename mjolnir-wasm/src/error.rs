//! Failures as real JavaScript `Error` objects, never bare strings.
//!
//! The classes are defined once, in a JavaScript module snippet (no `eval`, so pages work
//! under a Content-Security-Policy of `script-src 'self' 'wasm-unsafe-eval'`):
//!
//! ```text
//! Error
//! └── MjolnirError          code, key (null when the failure is about no one key)
//!     ├── ConflictError     too many conflicts; key names the last conflicting key; attempts
//!     ├── ForbiddenError    the app's policies refused a read or a write
//!     ├── ConstraintError   a CHECK, NOT NULL, UNIQUE or FOREIGN KEY constraint refused a write
//!     ├── SchemaError       unknown table or column, wrong type, primary-key change,
//!     │                     invalid write, invalid query, missing row
//!     ├── ConnectionError   the connection to the server was lost
//!     └── ProtocolError     the server said something this client does not understand
//! ```
//!
//! `code` is the wire's [`ErrorKind`] in snake case (`"forbidden"`, `"wrong_type"`, …), or
//! `"conflict"`, `"disconnected"` and `"protocol"` for the failures the client detects
//! itself. `key` is the key as it travels, e.g. `{kind: 'row', table: 'users', pk: 'alice'}`.
//! Pages reach the classes for `instanceof` through [`error_classes`].

use crate::convert::key_to_js;
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::{ErrorKind, Key};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = r#"
export class MjolnirError extends Error {
  constructor(message, code, key) {
    super(message);
    this.code = code;
    this.key = key === undefined ? null : key;
  }
}
export class ConflictError extends MjolnirError {
  constructor(message, key, attempts) {
    super(message, 'conflict', key);
    this.attempts = attempts;
  }
}
export class ForbiddenError extends MjolnirError {}
export class ConstraintError extends MjolnirError {}
export class SchemaError extends MjolnirError {}
export class ConnectionError extends MjolnirError {}
export class ProtocolError extends MjolnirError {}

const CLASSES = Object.freeze({
  MjolnirError, ConflictError, ForbiddenError, ConstraintError, SchemaError,
  ConnectionError, ProtocolError,
});
// `name` lives on each prototype, as for the built-in errors (TypeError.prototype.name), so
// that it is already right while the Error constructor records the stack's first line.
for (const [name, cls] of Object.entries(CLASSES)) {
  Object.defineProperty(cls.prototype, 'name', { value: name, writable: true, configurable: true });
}

export function classes() { return CLASSES; }
"#)]
extern "C" {
    #[wasm_bindgen(extends = js_sys::Error)]
    type MjolnirError;
    #[wasm_bindgen(constructor)]
    fn new(message: &str, code: &str, key: &JsValue) -> MjolnirError;

    #[wasm_bindgen(extends = MjolnirError, extends = js_sys::Error)]
    type ConflictError;
    #[wasm_bindgen(constructor)]
    fn new(message: &str, key: &JsValue, attempts: u32) -> ConflictError;

    #[wasm_bindgen(extends = MjolnirError, extends = js_sys::Error)]
    type ForbiddenError;
    #[wasm_bindgen(constructor)]
    fn new(message: &str, code: &str, key: &JsValue) -> ForbiddenError;

    #[wasm_bindgen(extends = MjolnirError, extends = js_sys::Error)]
    type ConstraintError;
    #[wasm_bindgen(constructor)]
    fn new(message: &str, code: &str, key: &JsValue) -> ConstraintError;

    #[wasm_bindgen(extends = MjolnirError, extends = js_sys::Error)]
    type SchemaError;
    #[wasm_bindgen(constructor)]
    fn new(message: &str, code: &str, key: &JsValue) -> SchemaError;

    #[wasm_bindgen(extends = MjolnirError, extends = js_sys::Error)]
    type ConnectionError;
    #[wasm_bindgen(constructor)]
    fn new(message: &str, code: &str, key: &JsValue) -> ConnectionError;

    #[wasm_bindgen(extends = MjolnirError, extends = js_sys::Error)]
    type ProtocolError;
    #[wasm_bindgen(constructor)]
    fn new(message: &str, code: &str, key: &JsValue) -> ProtocolError;

    /// The frozen object `{MjolnirError, ConflictError, …}`, the same one on every call.
    #[wasm_bindgen(js_name = classes)]
    fn js_classes() -> js_sys::Object;
}

/// The error classes, for `instanceof`: `{MjolnirError, ConflictError, ForbiddenError,
/// ConstraintError, SchemaError, ConnectionError, ProtocolError}`. Frozen, and the same
/// object on every call.
pub fn error_classes() -> js_sys::Object {
    js_classes()
}

/// Why a transaction failed for good. Becomes one of the JavaScript classes above through
/// `JsValue::from`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The handler kept conflicting until the retry policy gave up.
    #[error("gave up after {attempts} attempts: conflict on {key}")]
    Conflict { key: Key, attempts: u32 },
    /// The server refused the transaction; final, not retried.
    #[error("{}: {}", .0.code, .0.message)]
    Rejected(ErrorReply),
    /// The connection was lost before the outcome was known.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The server broke the protocol, or the client could not make progress.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Which JavaScript class a refusal becomes. Every kind is listed, so a new one must be
/// placed here before the crate compiles.
fn class_of(kind: ErrorKind) -> Class {
    match kind {
        ErrorKind::Forbidden => Class::Forbidden,
        ErrorKind::ConstraintViolation => Class::Constraint,
        ErrorKind::UnknownTable
        | ErrorKind::UnknownColumn
        | ErrorKind::WrongType
        | ErrorKind::PrimaryKeyChange
        | ErrorKind::InvalidWrite
        | ErrorKind::InvalidQuery
        | ErrorKind::NotFound => Class::Schema,
        ErrorKind::Malformed
        | ErrorKind::UnknownMessage
        | ErrorKind::ProtocolVersion
        | ErrorKind::Handshake
        | ErrorKind::Unauthenticated
        | ErrorKind::TooLarge
        | ErrorKind::Internal => Class::Base,
    }
}

/// The classes a refusal can become.
#[derive(Clone, Copy, Debug)]
enum Class {
    Base,
    Forbidden,
    Constraint,
    Schema,
}

/// The wire name of a kind (`"wrong_type"`): what programs match on as `err.code`.
pub(crate) fn code_of(kind: ErrorKind) -> String {
    // The JSON text of a unit variant is its quoted name. Through text rather than
    // `serde_json::Value`, whose serializer the wasm would carry for this alone.
    match serde_json::to_string(&kind) {
        Ok(text) => text.trim_matches('"').to_owned(),
        // Unreachable for a unit-variant enum; the Display form is the next best name.
        Err(_) => kind.to_string(),
    }
}

impl From<RuntimeError> for JsValue {
    fn from(err: RuntimeError) -> JsValue {
        let message = err.to_string();
        match err {
            RuntimeError::Conflict { key, attempts } => {
                ConflictError::new(&message, &key_to_js(&key), attempts).into()
            }
            RuntimeError::Rejected(reply) => {
                let code = code_of(reply.code);
                let key = reply.key.as_ref().map_or(JsValue::NULL, key_to_js);
                match class_of(reply.code) {
                    Class::Base => MjolnirError::new(&message, &code, &key).into(),
                    Class::Forbidden => ForbiddenError::new(&message, &code, &key).into(),
                    Class::Constraint => ConstraintError::new(&message, &code, &key).into(),
                    Class::Schema => SchemaError::new(&message, &code, &key).into(),
                }
            }
            RuntimeError::Disconnected(_) => {
                ConnectionError::new(&message, "disconnected", &JsValue::NULL).into()
            }
            RuntimeError::Protocol(_) => {
                ProtocolError::new(&message, "protocol", &JsValue::NULL).into()
            }
        }
    }
}
