// A shared todo list. Every event handler below runs as one atomic transaction over the
// server's data and this page's own state (mjolnir.state): it commits whole or, if the
// server refuses it, is rolled back whole, page state and DOM included.
//
// The list itself is a template (index.html): `data-each` over the query
// `table('todos').orderBy('created')`, which the server keeps live. So the handlers only
// change rows; no code here draws or updates the list. An insert reads nothing, so two
// pages adding at once never conflict.

// The form's submit handler (Enter in the box, or the Add button).
function add() {
  var input = document.getElementById('title');
  addTodo(input.value);
  input.value = ''; // restored if the transaction is refused
}

function addTodo(title) {
  // The key is left out: insert generates a uuid, and the returned row knows it. The
  // database fills in `created` and `created_by`. An empty or overlong title is refused
  // by the table's CHECK, at the commit.
  var todo = mjolnir.table('todos').insert({ title: title.trim() });
  mjolnir.state.added += 1; // undone with the rest if the commit fails
  return todo.id;
}

function toggle(id) {
  var todo = mjolnir.table('todos').find(id);
  if (todo) todo.done = !todo.done;
}

// Only its creator may delete an item: the table's policy refuses anyone else.
function remove(id) {
  if (!mjolnir.table('todos').find(id)) return; // someone deleted it already
  mjolnir.table('todos').delete(id);
}

// Page state only: the list's data-filter template shows it, and todo.css hides items.
function show(filter) {
  mjolnir.state.filter = filter;
}

// The buttons of every item, present and future: one listener on the list. The item a
// click is in says which row it shows (its data-id template); the handler reads that row
// in its own transaction.
document.addEventListener('DOMContentLoaded', function () {
  document.getElementById('todos').addEventListener('click', function (event) {
    var item = event.target.closest('[data-id]');
    if (!item) return;
    if (event.target.matches('.tick')) toggle(item.dataset.id);
    else if (event.target.matches('.delete')) remove(item.dataset.id);
  });
});

mjolnir.ready.then(function (m) {
  m.state.filter = 'all';
  m.state.added = 0;
  // A refused transaction says why; the next one that commits clears the message.
  var error = document.getElementById('error');
  m.on('abort', function (e) { if (e.error) error.textContent = 'Not done: ' + e.error.message; });
  m.on('commit', function () { error.textContent = ''; });
});
