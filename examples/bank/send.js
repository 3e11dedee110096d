// transmit some money
function send() {
  var fromName = mjolnir.user;
  var from =
    mjolnir.table('users').find(fromName);

  var toName = document.
    getElementById('to').value;
  var to =
    mjolnir.table('users').find(toName);

  var amount = parseInt(
    document.getElementById('amount').value);

  if (from.balance >= amount) {
    from.balance -= amount;
    to.balance += amount;
  }
}
