// Fills the landing page from /api/info: the server is the one source of names, URLs and keys.
async function load() {
  const response = await fetch('/api/info');
  const info = await response.json();
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
load().catch((error) => {
  document.getElementById('dataset').textContent = `could not reach the server: ${error}`;
});
