//! DOM rollback: what one handler attempt changed in the page, and how to undo it.
//!
//! [`DomJournal::start`] begins recording before the attempt runs; [`DomJournal::finish`]
//! ends it once the handler returns, and [`DomChanges::revert`] undoes the attempt if it
//! aborts.
//!
//! # What is recorded
//!
//! A `MutationObserver` on the root, over its whole subtree, with old values: attribute
//! changes, text (character data) changes and child-list changes. Its records are taken
//! synchronously with `takeRecords()` at the end of the attempt; the observer's callback
//! does nothing and, since the queue is emptied before the observer is disconnected, is
//! never even called. Records are therefore complete and in order without waiting for a
//! microtask, and nothing else can run between the handler and the end of the journal.
//!
//! Changing the `value`, `checked` or `indeterminate` of an `<input>`, the `value` of a
//! `<textarea>` or the selection of a `<select>` changes no attribute and makes no record.
//! That is the common way handlers touch forms, so the journal also snapshots those
//! properties of every form control under the root when it starts, and restores, after the
//! records are undone, those that differ.
//!
//! # What is not reverted
//!
//! Other state that lives outside attributes and the tree: focus and text selection,
//! scroll positions, canvas contents, media playback, `<dialog>` top-layer state, the
//! dirty flag of a form control, file inputs' chosen files, custom elements' internal
//! state, shadow trees (a `MutationObserver` does not see into them), and anything outside
//! the document (timers, storage, requests).
//!
//! An attribute that the attempt removed comes back at the end of its element's attribute
//! list: `MutationRecord`s do not say where it was. Attribute order has no meaning in HTML,
//! but it shows in `outerHTML` and in `element.attributes`.
//!
//! # Borrows
//!
//! Reverting calls DOM methods, and those can run page JavaScript synchronously (custom
//! elements' `connectedCallback`, `disconnectedCallback` and `attributeChangedCallback`).
//! [`DomChanges`] is immutable plain data, so no Rust borrow is held while that happens;
//! callers must not hold their own `RefCell` borrows across [`DomChanges::revert`] either.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    Document, DocumentFragment, Element, HtmlInputElement, HtmlOptionElement, HtmlSelectElement,
    HtmlTextAreaElement, MutationObserver, MutationObserverInit, MutationRecord, Node, NodeList,
};

/// The form controls whose properties are snapshot.
const CONTROLS: &str = "input, textarea, select";

thread_local! {
    /// The observer callback. It does nothing (records are taken synchronously), so one
    /// function serves every journal and is never freed.
    static IGNORE_RECORDS: js_sys::Function =
        Closure::<dyn Fn()>::new(|| {}).into_js_value().unchecked_into();
}

/// Records the DOM changes of one handler attempt. Started before the attempt, finished
/// right after it, with no JavaScript turn in between.
#[derive(Debug)]
pub struct DomJournal {
    observer: MutationObserver,
    controls: Vec<(Element, ControlState)>,
}

/// What one attempt changed in the DOM, ready to be undone.
#[derive(Debug)]
pub struct DomChanges {
    /// In the order they happened; undone in reverse.
    changes: Vec<Change>,
    /// The form controls whose properties differed at the end of the attempt, with the
    /// values they had before it.
    controls: Vec<ControlChange>,
}

/// One mutation record, in the terms needed to undo it.
#[derive(Debug)]
enum Change {
    Attribute {
        target: Element,
        namespace: Option<String>,
        name: String,
        /// `None` when the attribute did not exist.
        old: Option<String>,
    },
    Text {
        target: Node,
        old: Option<String>,
    },
    Children {
        parent: Node,
        added: Vec<Node>,
        removed: Vec<Node>,
        /// The node after the added or removed ones, `None` at the end of the list.
        next: Option<Node>,
    },
}

/// A form control the attempt changed: its properties before, and as the attempt left
/// them.
#[derive(Debug)]
struct ControlChange {
    element: Element,
    before: ControlState,
    after: ControlState,
}

/// The properties of a form control that change without a mutation record.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ControlState {
    Input {
        /// `None` for file inputs, whose value a script can only clear.
        value: Option<String>,
        checked: bool,
        indeterminate: bool,
    },
    TextArea {
        value: String,
    },
    Select {
        selected_index: i32,
        /// Each option's selectedness, for `<select multiple>` only.
        selected: Vec<bool>,
    },
}

impl DomJournal {
    /// Starts recording changes to `root` and everything under it.
    pub fn start(root: &Node) -> Result<DomJournal, JsValue> {
        let observer = IGNORE_RECORDS.with(MutationObserver::new)?;
        let options = MutationObserverInit::new();
        options.set_subtree(true);
        options.set_child_list(true);
        options.set_attributes(true);
        options.set_attribute_old_value(true);
        options.set_character_data(true);
        options.set_character_data_old_value(true);
        // Snapshot before observing: reading properties changes nothing, and this order
        // means a failure leaves no observer behind.
        let controls = snapshot_controls(root)?;
        observer.observe_with_options(root, &options)?;
        Ok(DomJournal { observer, controls })
    }

    /// Stops recording and returns what changed. Call it synchronously after the attempt.
    pub fn finish(mut self) -> Result<DomChanges, JsValue> {
        let records = self.observer.take_records();
        self.observer.disconnect();
        // A record that cannot be read (none the DOM standard defines) is skipped rather
        // than losing the whole attempt's undo.
        let changes = records
            .iter()
            .filter_map(|record| {
                Change::from_record(record.unchecked_into())
                    .inspect_err(|err| warn("skipped a mutation record", err))
                    .ok()
            })
            .collect();
        let controls = std::mem::take(&mut self.controls)
            .into_iter()
            .filter_map(|(element, before)| {
                let after = ControlState::read(&element)?;
                (after != before).then_some(ControlChange {
                    element,
                    before,
                    after,
                })
            })
            .collect();
        Ok(DomChanges { changes, controls })
    }
}

impl Drop for DomJournal {
    /// A journal dropped without [`DomJournal::finish`] (an early return) stops observing,
    /// so it does not pile up records for the rest of the page's life.
    fn drop(&mut self) {
        self.observer.disconnect();
    }
}

impl DomChanges {
    /// Whether the attempt changed nothing this journal can see.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.controls.is_empty()
    }

    /// Undoes the attempt's changes: the records in reverse order, then the form controls'
    /// properties, for each control that still shows what the attempt left. One that
    /// differs was changed since, by the user typing while the commit was in flight, say:
    /// putting back the value from before the attempt would throw that typing away.
    ///
    /// Best effort: a step that the DOM refuses (because something outside the attempt
    /// changed the same nodes since) is reported on the console and skipped, and the rest
    /// is still undone.
    pub fn revert(&self) {
        for change in self.changes.iter().rev() {
            if let Err(err) = change.undo() {
                warn("could not undo a DOM change", &err);
            }
        }
        for c in &self.controls {
            if ControlState::read(&c.element).as_ref() == Some(&c.after)
                && let Err(err) = c.before.restore(&c.element)
            {
                warn("could not restore a form control", &err);
            }
        }
    }
}

impl Change {
    fn from_record(record: MutationRecord) -> Result<Change, JsValue> {
        let target = record
            .target()
            .ok_or_else(|| JsValue::from_str("a mutation record without a target"))?;
        match record.type_().as_str() {
            "attributes" => Ok(Change::Attribute {
                target: target.dyn_into()?,
                namespace: record.attribute_namespace(),
                name: record.attribute_name().unwrap_or_default(),
                old: record.old_value(),
            }),
            "characterData" => Ok(Change::Text {
                target,
                old: record.old_value(),
            }),
            "childList" => Ok(Change::Children {
                parent: target,
                added: nodes(&record.added_nodes()),
                removed: nodes(&record.removed_nodes()),
                next: record.next_sibling(),
            }),
            other => Err(JsValue::from_str(&format!(
                "unknown mutation record type {other:?}"
            ))),
        }
    }

    /// Undoes this change, assuming every later one has been undone already: the DOM is
    /// then exactly as this change left it.
    fn undo(&self) -> Result<(), JsValue> {
        match self {
            Change::Attribute {
                target,
                namespace,
                name,
                old: Some(old),
            } => target.set_attribute_ns(namespace.as_deref(), name, old),
            Change::Attribute {
                target,
                namespace,
                name,
                old: None,
            } => target.remove_attribute_ns(namespace.as_deref(), name),
            Change::Text { target, old } => {
                target.set_node_value(old.as_deref());
                Ok(())
            }
            Change::Children {
                parent,
                added,
                removed,
                next,
            } => {
                for node in added {
                    // An added node that is no longer there was moved or removed outside
                    // the attempt; there is nothing of ours left to take away.
                    if node.parent_node().as_ref() == Some(parent) {
                        parent.remove_child(node)?;
                    }
                }
                let next = next
                    .as_ref()
                    .filter(|n| n.parent_node().as_ref() == Some(parent));
                for node in removed {
                    parent.insert_before(node, next)?;
                }
                Ok(())
            }
        }
    }
}

impl ControlState {
    /// The properties of `element`, when it is a form control.
    fn read(element: &Element) -> Option<ControlState> {
        if let Some(input) = element.dyn_ref::<HtmlInputElement>() {
            let is_file = input.type_() == "file";
            return Some(ControlState::Input {
                value: (!is_file).then(|| input.value()),
                checked: input.checked(),
                indeterminate: input.indeterminate(),
            });
        }
        if let Some(textarea) = element.dyn_ref::<HtmlTextAreaElement>() {
            return Some(ControlState::TextArea {
                value: textarea.value(),
            });
        }
        if let Some(select) = element.dyn_ref::<HtmlSelectElement>() {
            let selected = if select.multiple() {
                (0..select.length())
                    .map(|i| {
                        select
                            .item(i)
                            .and_then(|o| o.dyn_into::<HtmlOptionElement>().ok())
                            .is_some_and(|o| o.selected())
                    })
                    .collect()
            } else {
                Vec::new()
            };
            return Some(ControlState::Select {
                selected_index: select.selected_index(),
                selected,
            });
        }
        None
    }

    /// Puts these properties back on `element`.
    fn restore(&self, element: &Element) -> Result<(), JsValue> {
        match self {
            ControlState::Input {
                value,
                checked,
                indeterminate,
            } => {
                let input: &HtmlInputElement = element.dyn_ref().ok_or("not an input")?;
                // Only what differs is set: setting a property marks the control dirty, and
                // a dirty control stops following its attribute.
                if let Some(value) = value
                    && input.value() != *value
                {
                    input.set_value(value);
                }
                // Checking a radio button unchecks the rest of its group, whose snapshot
                // has them unchecked anyway, so the order of restores does not matter.
                if input.checked() != *checked {
                    input.set_checked(*checked);
                }
                if input.indeterminate() != *indeterminate {
                    input.set_indeterminate(*indeterminate);
                }
            }
            ControlState::TextArea { value } => {
                let textarea: &HtmlTextAreaElement = element.dyn_ref().ok_or("not a textarea")?;
                textarea.set_value(value);
            }
            ControlState::Select {
                selected_index,
                selected,
            } => {
                let select: &HtmlSelectElement = element.dyn_ref().ok_or("not a select")?;
                if selected.is_empty() || !select.multiple() {
                    select.set_selected_index(*selected_index);
                } else {
                    for (i, was) in (0u32..).zip(selected) {
                        if let Some(option) = select
                            .item(i)
                            .and_then(|o| o.dyn_into::<HtmlOptionElement>().ok())
                        {
                            option.set_selected(*was);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Every form control under `root`, with its properties now.
fn snapshot_controls(root: &Node) -> Result<Vec<(Element, ControlState)>, JsValue> {
    let mut found = Vec::new();
    if let Some(element) = root.dyn_ref::<Element>() {
        // querySelectorAll looks only below the root.
        if let Some(state) = ControlState::read(element) {
            found.push((element.clone(), state));
        }
    }
    let list = if let Some(element) = root.dyn_ref::<Element>() {
        element.query_selector_all(CONTROLS)?
    } else if let Some(document) = root.dyn_ref::<Document>() {
        document.query_selector_all(CONTROLS)?
    } else if let Some(fragment) = root.dyn_ref::<DocumentFragment>() {
        fragment.query_selector_all(CONTROLS)?
    } else {
        return Ok(found); // a text node or the like: no controls below
    };
    for node in nodes(&list) {
        let element: Element = node.unchecked_into();
        if let Some(state) = ControlState::read(&element) {
            found.push((element, state));
        }
    }
    Ok(found)
}

fn nodes(list: &NodeList) -> Vec<Node> {
    (0..list.length()).filter_map(|i| list.item(i)).collect()
}

fn warn(what: &str, err: &JsValue) {
    web_sys::console::warn_2(&JsValue::from_str(&format!("mjolnir: {what}:")), err);
}
