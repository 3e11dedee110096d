// Not in the paper: shows each transaction's outcome under the form, so a transfer the
// server refused (or that was lost with the connection) says so. The connection state is
// shown by bank.css from the data-mjolnir-connection attribute the drop-in keeps on <html>.
mjolnir.ready.then(function (m) {
  var log = document.getElementById('log');
  function note(kind, text) {
    var li = document.createElement('li');
    li.className = kind;
    li.textContent = text;
    log.prepend(li);
  }
  m.on('commit', function (e) { note('committed', 'committed (version ' + e.version + ')'); });
  m.on('abort', function (e) {
    if (e.error) note('failed', 'not done: ' + e.error.message);
  });
});
