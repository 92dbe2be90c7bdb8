// Fills the landing page from /api/v1/info: the server is the one source of names, URLs and
// keys. The API needs the token that `promptcut serve` printed in this page's address
// (#token=…, a fragment: browsers never send it to any server); it is kept for this tab only.
function token() {
  const given = new URLSearchParams(location.hash.slice(1)).get('token');
  if (given) {
    sessionStorage.setItem('promptcut-token', given);
    history.replaceState(null, '', location.pathname);  // out of the address bar and history
  }
  return sessionStorage.getItem('promptcut-token');
}

async function api(path) {
  const secret = token();
  if (!secret) {
    throw new Error('open this page from the address `promptcut serve` printed ' +
                    '(it carries the token)');
  }
  const response = await fetch(path, {headers: {Authorization: `Bearer ${secret}`}});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error);
  return answer;
}

async function load() {
  const info = await api('/api/v1/info');
  document.title = `promptcut: ${info.name}`;
  document.getElementById('project-name').textContent = info.name;
  document.getElementById('dataset').textContent = info.dataset;
  const [z, y, x] = info.shape_zyx;
  const [vz, vy, vx] = info.voxel_size_nm_zyx;
  document.getElementById('volume').textContent =
    `${z} × ${y} × ${x} voxels (z, y, x) at ${vz} × ${vy} × ${vx} nm`;
  document.getElementById('credits').textContent = info.credits || 'none given';
  const link = document.getElementById('viewer-link');
  link.href = info.viewer_url;
  const body = document.querySelector('#keys tbody');
  for (const key of info.keys) {
    const row = body.insertRow();
    row.insertCell().innerHTML = `<kbd>${key.key}</kbd>`;
    row.insertCell().textContent = key.action;
  }
}

document.getElementById('user-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const user = document.getElementById('user').value;
  try {
    const answer = await api(`/api/v1/viewer?user=${encodeURIComponent(user)}`);
    location.href = answer.viewer_url;
  } catch (error) {
    document.getElementById('user-error').textContent = error.message;
  }
});

load().catch((error) => {
  document.getElementById('dataset').textContent = `could not reach the server: ${error.message}`;
});
