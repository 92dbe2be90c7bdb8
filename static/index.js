// Fills the landing page from /api/v1/info: the server is the one source of names, URLs and
// keys (token() and api() come from api.js).
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

// the dashboard of whoever is named in the form (opened in a tab of its own)
function dashboardLink() {
  const user = document.getElementById('user').value || 'proofreader';
  document.getElementById('dashboard-link').href =
    `/static/dashboard.html#token=${encodeURIComponent(token() || '')}` +
    `&user=${encodeURIComponent(user)}`;
}
document.getElementById('user').addEventListener('input', dashboardLink);

load().then(dashboardLink).catch((error) => {
  document.getElementById('dataset').textContent = `could not reach the server: ${error.message}`;
});
