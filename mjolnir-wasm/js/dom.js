// DOM rollback (see src/dom.rs for what is and is not reverted): what one handler attempt
// changed in the page, and how to undo it.
//
// It lives in JavaScript because every step is a DOM call: recorded in wasm, each mutation
// record's fields and each form control's properties would cross into wasm one by one,
// and every transaction starts and ends a journal, so its fixed cost is paid by all.

// The form controls whose properties change without a mutation record.
const CONTROLS = 'input, textarea, select';
const TAGS = ['input', 'textarea', 'select'];
const OBSERVE = {
  subtree: true, childList: true, attributes: true, attributeOldValue: true,
  characterData: true, characterDataOldValue: true,
};
// Records are taken synchronously, and the queue is empty when the observer is
// disconnected, so its callback is never called.
const ignore = () => {};
// An observer that no journal uses: journals rarely overlap, so one is reused rather than a
// new one made per attempt.
let spare = null;

const warn = (what, err) => console.warn(`mjolnir: ${what}:`, err);

/** Records the DOM changes under `root` (default: the document element) from now on. */
export class Journal {
  constructor(root) {
    root ??= document.documentElement;
    // Snapshot before observing: reading properties changes nothing, and this order means
    // a failure leaves no observer behind.
    this.controls = snapshotControls(root);
    this.observer = spare ?? new MutationObserver(ignore);
    spare = null;
    this.observer.observe(root, OBSERVE);
  }

  /** Stops recording: the attempt's changes, or null if it changed nothing. */
  finish() {
    const records = this.observer.takeRecords();
    this.stop();
    const controls = changedControls(this.controls);
    return records.length === 0 && controls === null ? null : new Changes(records, controls);
  }

  /** Stops recording (idempotent), and keeps the observer for the next journal. */
  stop() {
    if (this.observer === null) return;
    this.observer.disconnect();
    spare = this.observer;
    this.observer = null;
  }
}

// Ids of the nodes an attempt changed, for the engine to tell which attempts overlap (see
// `Changes.footprint`). Even numbers: state entries take the odd ones (state.js).
const nodeIds = new WeakMap();
let nextNodeId = 0;
function nodeId(node) {
  let id = nodeIds.get(node);
  if (id === undefined) {
    id = nextNodeId += 2;
    nodeIds.set(node, id);
  }
  return id;
}

/** What one attempt changed: its mutation records and the form controls it changed. */
class Changes {
  constructor(records, controls) {
    this.records = records;
    // [element, before, after, …] for each control whose properties differ.
    this.controls = controls;
  }

  /**
   * The ids of the nodes the attempt changed: each record's target and the nodes it added
   * or removed, and each form control it changed. Two attempts whose footprints share an
   * id must be undone in reverse order; others may be undone in any order.
   */
  footprint() {
    const ids = new Set();
    for (const r of this.records) {
      ids.add(nodeId(r.target));
      for (const node of r.addedNodes ?? []) ids.add(nodeId(node));
      for (const node of r.removedNodes ?? []) ids.add(nodeId(node));
    }
    const c = this.controls;
    if (c !== null) for (let i = 0; i < c.length; i += 3) ids.add(nodeId(c[i]));
    return [...ids];
  }

  /**
   * Undoes the attempt's changes: the records in reverse order, then the form controls'
   * properties, for each control that still shows what the attempt left (one that differs
   * was changed since, by the user typing while the commit was in flight, say: putting back
   * the value from before would throw that typing away). Best effort: a step the DOM refuses
   * (something outside the attempt changed the same nodes since) is reported and skipped.
   */
  revert() {
    for (let i = this.records.length - 1; i >= 0; i--) {
      try {
        undo(this.records[i]);
      } catch (err) {
        warn('could not undo a DOM change', err);
      }
    }
    const c = this.controls;
    if (c === null) return;
    for (let i = 0; i < c.length; i += 3) {
      if (!same(read(c[i]), c[i + 2])) continue;
      try {
        restore(c[i], c[i + 1]);
      } catch (err) {
        warn('could not restore a form control', err);
      }
    }
  }
}

/** Undoes one record, every later one being undone already (the DOM is as it left it). */
function undo(r) {
  const target = r.target;
  switch (r.type) {
    case 'attributes':
      if (r.oldValue === null) target.removeAttributeNS(r.attributeNamespace, r.attributeName);
      else target.setAttributeNS(r.attributeNamespace, r.attributeName, r.oldValue);
      break;
    case 'characterData':
      target.nodeValue = r.oldValue;
      break;
    case 'childList': {
      for (const node of r.addedNodes) {
        // An added node that is no longer there was moved or removed outside the attempt:
        // there is nothing of ours left to take away.
        if (node.parentNode === target) target.removeChild(node);
      }
      const next = r.nextSibling !== null && r.nextSibling.parentNode === target ? r.nextSibling : null;
      for (const node of r.removedNodes) target.insertBefore(node, next);
      break;
    }
    default:
      warn('skipped a mutation record', r.type);
  }
}

/**
 * [element, state, …] for every form control under `root` (and `root` itself), or null if
 * there is none. An element or a document is searched through its live, cached collections
 * by tag name, which cost nothing while the page does not change; a fragment by selector.
 */
function snapshotControls(root) {
  let found = null;
  const add = (el) => {
    const state = read(el);
    if (state !== undefined) (found ??= []).push(el, state);
  };
  if (root instanceof Element) add(root);
  if (typeof root.getElementsByTagName === 'function') {
    for (const tag of TAGS) {
      const list = root.getElementsByTagName(tag);
      for (let i = 0; i < list.length; i++) add(list[i]);
    }
  } else if (typeof root.querySelectorAll === 'function') {
    for (const el of root.querySelectorAll(CONTROLS)) add(el);
  }
  return found;
}

/** [element, before, after, …] for the snapshot's controls that differ now, or null. */
function changedControls(snapshot) {
  if (snapshot === null) return null;
  let changed = null;
  for (let i = 0; i < snapshot.length; i += 2) {
    const after = read(snapshot[i]);
    if (after !== undefined && !same(snapshot[i + 1], after)) (changed ??= []).push(snapshot[i], snapshot[i + 1], after);
  }
  return changed;
}

/** The properties of a form control that change without a record; undefined for others. */
function read(el) {
  if (el instanceof HTMLInputElement) {
    // A file input's value can only be cleared by a script: not snapshot (null).
    return [el.type === 'file' ? null : el.value, el.checked, el.indeterminate];
  }
  if (el instanceof HTMLTextAreaElement) return [el.value];
  if (el instanceof HTMLSelectElement) {
    // Each option's selectedness, for <select multiple> only.
    return [el.selectedIndex, el.multiple ? Array.from(el.options, (o) => o.selected) : null];
  }
  return undefined;
}

function same(a, b) {
  if (a === undefined || b === undefined || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (Array.isArray(x) ? !(Array.isArray(y) && same(x, y)) : x !== y) return false;
  }
  return true;
}

/** Puts the properties `state` back on `el`. */
function restore(el, state) {
  if (el instanceof HTMLInputElement) {
    const [value, checked, indeterminate] = state;
    // Only what differs is set: setting a property marks the control dirty, and a dirty
    // control stops following its attribute. Checking a radio button unchecks the rest of
    // its group, whose snapshot has them unchecked anyway, so the order does not matter.
    if (value !== null && el.value !== value) el.value = value;
    if (el.checked !== checked) el.checked = checked;
    if (el.indeterminate !== indeterminate) el.indeterminate = indeterminate;
  } else if (el instanceof HTMLTextAreaElement) {
    el.value = state[0];
  } else if (el instanceof HTMLSelectElement) {
    const [selectedIndex, selected] = state;
    if (selected === null || selected.length === 0 || !el.multiple) el.selectedIndex = selectedIndex;
    else selected.forEach((was, i) => { if (el.options[i]) el.options[i].selected = was; });
  }
}
