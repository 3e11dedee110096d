// Shared notes with a search box. Every event handler below is one atomic transaction.
// The list is a template (index.html): `data-each` over a query the server keeps live,
// the newest notes or, when the box has text, the search; nothing here draws it.

// The form's submit handler (Enter in the box, or the button). The key and `author` and
// `posted` are left out: the runtime makes a uuid, the database fills in the rest. An empty
// note is refused by the table's CHECK, and the box gets its text back.
function post() {
  var box = document.getElementById('note');
  mjolnir.table('notes').insert({ body: box.value.trim() });
  box.value = '';
}

// Page state only: the list's template reads it. Blank text is no search.
function search(text) {
  mjolnir.state.q = text.trim();
}

mjolnir.ready.then(function (m) {
  m.state.q = '';
  // A refused transaction says why; the next one that commits clears the message.
  var error = document.getElementById('error');
  m.on('abort', function (e) { if (e.error) error.textContent = 'Not posted: ' + e.error.message; });
  m.on('commit', function () { error.textContent = ''; });
});
