//! `mjolnir.state`: the page's own globals, part of every transaction.
//!
//! A persistent map (`imbl`), so taking a copy before each attempt and restoring it on
//! abort are O(1) whatever the state's size: the rollback the paper proposes with
//! immutable structures. Values are stored as they are given; an object stored here and
//! then mutated in place (`state.list.push(x)`) changes behind the map's back and is not
//! rolled back, so values are frozen (`Object.freeze`) when stored: assign a new value
//! instead (`state.list = [...state.list, x]`).

use crate::convert::{self, data_descriptor};
use crate::runtime::Runtime;
use js_sys::Object;
use std::rc::Rc;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// Keys and values are reference-counted: a write copies the path to its entry in the
/// map, and copying an entry is then a count bump, not a new string and a new JS value
/// slot (a call out of wasm) per entry on the path.
#[derive(Clone, Debug, Default)]
pub struct PageState(imbl::HashMap<Rc<str>, Rc<JsValue>>);

impl PageState {
    pub fn get(&self, name: &str) -> Option<&JsValue> {
        self.0.get(name).map(|v| &**v)
    }

    pub fn set(&mut self, name: String, value: JsValue) {
        self.0.insert(name.into(), Rc::new(value));
    }

    pub fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|k| &**k)
    }
}

/// The `mjolnir.state` object: a proxy whose properties live in the runtime's
/// [`PageState`]. Reading and writing it outside a transaction is allowed (nothing to roll
/// back then); inside one, an abort restores what it was.
pub fn proxy(rt: &Rc<Runtime>) -> JsValue {
    let get = {
        let rt = rt.clone();
        Closure::<dyn Fn(JsValue, JsValue) -> JsValue>::new(
            move |_target: JsValue, prop: JsValue| {
                prop.as_string()
                    .and_then(|name| rt.state.borrow().get(&name).cloned())
                    .unwrap_or(JsValue::UNDEFINED)
            },
        )
    };
    let set = {
        let rt = rt.clone();
        Closure::<dyn Fn(JsValue, JsValue, JsValue) -> bool>::new(
            move |_target: JsValue, prop: JsValue, value: JsValue| {
                let Some(name) = prop.as_string() else {
                    return false;
                };
                if value.is_object() && !value.is_function() {
                    Object::freeze(value.unchecked_ref::<Object>());
                }
                rt.state.borrow_mut().set(name, value);
                rt.state_changed();
                true
            },
        )
    };
    let delete = {
        let rt = rt.clone();
        Closure::<dyn Fn(JsValue, JsValue) -> bool>::new(move |_target: JsValue, prop: JsValue| {
            if let Some(name) = prop.as_string() {
                rt.state.borrow_mut().remove(&name);
                rt.state_changed();
            }
            true
        })
    };
    let has = {
        let rt = rt.clone();
        Closure::<dyn Fn(JsValue, JsValue) -> bool>::new(move |_target: JsValue, prop: JsValue| {
            prop.as_string()
                .is_some_and(|name| rt.state.borrow().get(&name).is_some())
        })
    };
    let own_keys = {
        let rt = rt.clone();
        Closure::<dyn Fn(JsValue) -> JsValue>::new(move |_target: JsValue| {
            rt.state
                .borrow()
                .names()
                .map(JsValue::from_str)
                .collect::<js_sys::Array>()
                .into()
        })
    };
    let descriptor = {
        let rt = rt.clone();
        Closure::<dyn Fn(JsValue, JsValue) -> JsValue>::new(
            move |_target: JsValue, prop: JsValue| {
                let Some(value) = prop
                    .as_string()
                    .and_then(|name| rt.state.borrow().get(&name).cloned())
                else {
                    return JsValue::UNDEFINED;
                };
                data_descriptor(&value)
            },
        )
    };
    convert::proxy(vec![
        ("get", get.into_js_value()),
        ("set", set.into_js_value()),
        ("deleteProperty", delete.into_js_value()),
        ("has", has.into_js_value()),
        ("ownKeys", own_keys.into_js_value()),
        ("getOwnPropertyDescriptor", descriptor.into_js_value()),
    ])
}
