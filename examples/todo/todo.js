// A shared todo list. Every event handler below runs as one atomic transaction over the
// server's data and this page's own state (mjolnir.state): it commits whole or, if the
// server refuses it, is rolled back whole, page state and DOM included.
//
// Mjölnir reads rows by key and has no queries, so the list itself (the ids, in order)
// is the key/value entry 'todos'. Every handler that inserts or deletes a row also
// rewrites that entry, in the same transaction, so the two change together or not at
// all. When two pages add at once, one of them commits first and the other conflicts on
// 'todos' and runs again on the new list: no item is lost.

// The form's submit handler (Enter in the box, or the Add button).
function add() {
  var input = document.getElementById('title');
  addTodo(input.value);
  input.value = ''; // restored if the transaction is refused
}

function addTodo(title) {
  // The key is left out: insert generates a uuid, and the returned row knows it.
  // An empty or overlong title is refused by the table's CHECK, at the commit.
  var todo = mjolnir.table('todos').insert({ title: title.trim() });
  var ids = mjolnir.kv.get('todos') || [];
  mjolnir.kv.set('todos', ids.concat([todo.id]));
  mjolnir.state.added += 1; // undone with the rest if the commit fails
  return todo.id;
}

function toggle(id) {
  var todo = mjolnir.table('todos').find(id);
  if (todo) todo.done = !todo.done;
}

// Only its creator may delete an item: the table's policy refuses anyone else, and then
// the list keeps the id too.
function remove(id) {
  if (!mjolnir.table('todos').find(id)) return; // someone deleted it already
  mjolnir.table('todos').delete(id);
  mjolnir.kv.set('todos', (mjolnir.kv.get('todos') || []).filter(function (x) {
    return x !== id;
  }));
}

// Page state only: the list's data-filter template shows it, and todo.css hides items.
function show(filter) {
  mjolnir.state.filter = filter;
}

// One <li> for a todo. Its text and attributes are {{ }} templates, so it stays live by
// itself: a title or a tick changed on any page shows here without any code of ours.
function item(id) {
  var row = "table('todos').find('" + id + "')";
  var li = document.createElement('li');
  li.dataset.id = id;
  li.setAttribute('data-done', '{{ ' + row + '.done }}');
  var tick = document.createElement('button');
  tick.className = 'tick';
  tick.textContent = '{{ ' + row + ".done ? '☑' : '☐' }}";
  tick.addEventListener('click', function () { toggle(id); });
  var title = document.createElement('span');
  title.className = 'title';
  title.textContent = '{{ ' + row + '.title }}';
  var by = document.createElement('small');
  by.textContent = '{{ ' + row + '.created_by }}';
  var del = document.createElement('button');
  del.className = 'delete';
  del.textContent = 'delete';
  del.addEventListener('click', function () { remove(id); });
  li.append(tick, ' ', title, ' ', by, ' ', del);
  return li;
}

// Brings the <ul> in line with the cached 'todos' entry: adds an <li> for each new id
// and drops those no longer listed. Called outside any transaction, whenever the entry
// changes (our own commits and everyone else's alike), so it draws committed data only.
function render() {
  var ids = mjolnir.kv.get('todos') || []; // outside a transaction: the cached value
  var list = document.getElementById('todos');
  var shown = {};
  Array.from(list.children).forEach(function (li) {
    if (ids.indexOf(li.dataset.id) < 0) li.remove();
    else shown[li.dataset.id] = true;
  });
  ids.forEach(function (id) {
    if (!shown[id]) list.append(item(id));
  });
}

mjolnir.ready.then(function (m) {
  m.state.filter = 'all';
  m.state.added = 0;
  m.on('change', function (keys) {
    if (keys.some(function (k) { return k.kind === 'kv' && k.key === 'todos'; })) render();
  });
  // A refused transaction says why; the next one that commits clears the message.
  var error = document.getElementById('error');
  m.on('abort', function (e) { if (e.error) error.textContent = 'Not done: ' + e.error.message; });
  m.on('commit', function () { error.textContent = ''; });
  render(); // starts loading the entry if it is not cached yet; 'change' follows
});
