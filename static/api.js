// The HTTP API from promptcut's own pages. The token comes in the page's address after `#`
// (a fragment: browsers never send it to any server), is kept for this tab only and taken out
// of the address bar.
function token() {
  const given = new URLSearchParams(location.hash.slice(1)).get('token');
  if (given) {
    sessionStorage.setItem('promptcut-token', given);
    const rest = new URLSearchParams(location.hash.slice(1));
    rest.delete('token');
    history.replaceState(null, '', location.pathname + (rest.toString() ? `#${rest}` : ''));
  }
  return sessionStorage.getItem('promptcut-token');
}

async function api(path, body) {
  const secret = token();
  if (!secret) {
    throw new Error('open this page from the address `promptcut serve` printed ' +
                    '(it carries the token)');
  }
  const options = {headers: {Authorization: `Bearer ${secret}`}};
  if (body !== undefined) {
    options.method = 'POST';
    options.body = JSON.stringify(body);
    options.headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(path, options);
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error);
  return answer;
}
