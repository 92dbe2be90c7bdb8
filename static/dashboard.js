// One proofreader's dashboard: the edit history (live, with undo and redo of one's own edits),
// other proofreaders' recent edits, and the segments (size, last edit, review mark) that take
// the proofreader's viewer there. Everything comes from the HTTP API (api.js), polled.
const me = new URLSearchParams(location.hash.slice(1)).get('user') || 'proofreader';
const POLL_MS = 1500;
let lastOperation = 0;
const operations = [];

function when(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}

function showError(error) {
  document.getElementById('error').textContent = error ? error.message : '';
}

async function refreshHistory() {
  const answer = await api(`/api/v1/operations?after=${lastOperation}&limit=1000`);
  if (!answer.operations.length) return;
  operations.push(...answer.operations);
  lastOperation = operations[operations.length - 1].id;
  const body = document.querySelector('#history tbody');
  for (const op of answer.operations) {
    const row = body.insertRow(0);  // newest first
    row.className = op.user === me ? 'mine' : 'other';
    row.dataset.operation = op.id;
    cell(row, op.id);
    cell(row, when(op.time));
    cell(row, op.user);
    cell(row, op.type + (op.target ? ` ${op.target}` : ''));
    const segments = op.type === 'review' ?
      [op.inputs.segment + (op.inputs.reviewed ? ' ✓' : ' ✗')] : op.segments;
    cell(row, segments.join(', '));
  }
  const others = operations.filter((op) => op.user !== me).slice(-10).reverse();
  const list = document.getElementById('others');
  list.replaceChildren(...others.map((op) => {
    const item = document.createElement('li');
    item.textContent = `${when(op.time)}: ${op.user} ${op.type} ` +
      `${op.segments.join(', ')} (operation ${op.id})`;
    return item;
  }));
  if (!others.length) list.innerHTML = '<li class="hint">none yet</li>';
  await refreshSegments();
}

async function refreshSegments() {
  const answer = await api('/api/v1/segments?limit=50');
  const body = document.querySelector('#segments tbody');
  body.replaceChildren();
  for (const seg of answer.segments) {
    const row = body.insertRow();
    row.dataset.segment = seg.segment;
    const changed = seg.reviewed && seg.last_edit &&
      seg.last_edit.operation > seg.reviewed.operation;
    row.className = (seg.reviewed ? 'reviewed' : '') + (changed ? ' changed-since-review' : '');
    cell(row, seg.segment);
    cell(row, seg.voxels.toLocaleString());
    cell(row, seg.supervoxels);
    cell(row, seg.last_edit ? `${seg.last_edit.type} ${seg.last_edit.operation} by ` +
         `${seg.last_edit.user}` + (changed ? ' (after the review)' : '') : 'none');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = !!seg.reviewed;
    box.title = seg.reviewed ? `reviewed by ${seg.reviewed.user} at ${when(seg.reviewed.time)}`
      : 'mark reviewed';
    box.addEventListener('click', (event) => {
      event.stopPropagation();
      review(seg.segment, box.checked);
    });
    const td = row.insertCell();
    td.appendChild(box);
    if (seg.reviewed) td.append(` ${seg.reviewed.user}`);
    row.addEventListener('click', () => show(seg.segment));
  }
}

async function edit(path, body) {
  try {
    const answer = await api(path, {user: me, ...body});
    document.getElementById('edit-result').textContent = answer.message;
    showError(null);
    await refreshHistory();
  } catch (error) {
    document.getElementById('edit-result').textContent = '';
    showError(error);
  }
}

function review(segment, reviewed) {
  return edit('/api/v1/review', {segment, reviewed});
}

async function show(segment) {
  try {
    const where = await api('/api/v1/show', {user: me, segment});
    const {x, y, z} = where.voxel;
    document.getElementById('edit-result').textContent =
      `your viewer went to segment ${segment} (x ${x}, y ${y}, z ${z})`;
    showError(null);
  } catch (error) {
    showError(error);
  }
}

function showQuestion(question) {
  const text = document.getElementById('question');
  for (const id of ['yes', 'no', 'skip']) document.getElementById(id).disabled = !question;
  if (!question) {
    text.textContent = 'no question left to ask';
    return;
  }
  const [a, b] = question.segments;
  const {x, y, z} = question.contact;
  text.textContent = `Are segments ${a} (cyan) and ${b} (magenta) one neuron? ` +
    `(model: ${Math.round(question.probability * 100)}%; contact at x ${x}, y ${y}, z ${z})`;
}

async function questionStep(request, describe) {
  try {
    const answer = await request();
    showQuestion('next' in answer ? answer.next : answer.question);
    document.getElementById('question-result').textContent = describe(answer);
    showError(null);
    await refreshHistory();
  } catch (error) {
    showError(error);
  }
}

function startQuestions() {
  const user = encodeURIComponent(me);
  document.getElementById('ask').addEventListener('click', () => questionStep(
    () => api(`/api/v1/question?user=${user}`), () => ''));
  for (const word of ['yes', 'no']) {
    document.getElementById(word).addEventListener('click', () => questionStep(
      () => api('/api/v1/answer', {user: me, answer: word}), (answer) => answer.message));
  }
  document.getElementById('skip').addEventListener('click', () => questionStep(
    () => api('/api/v1/skip', {user: me}), () => 'skipped'));
  document.getElementById('back').addEventListener('click', () => questionStep(
    () => api('/api/v1/back', {user: me}),
    (answer) => answer.undone ? answer.undone.message : 'back to a skipped question'));
}

async function start() {
  document.getElementById('me').textContent = me;
  const info = await api('/api/v1/info');
  document.getElementById('project').textContent = info.name;
  document.title = `promptcut dashboard: ${info.name} (${me})`;
  const viewer = await api(`/api/v1/viewer?user=${encodeURIComponent(me)}`);
  document.getElementById('viewer-link').href = viewer.viewer_url;
  const keys = document.querySelector('#keys tbody');
  for (const key of info.keys) {
    const row = keys.insertRow();
    row.insertCell().innerHTML = `<kbd>${key.key}</kbd>`;
    row.insertCell().textContent = key.action;
  }
  document.getElementById('undo').addEventListener('click', () => edit('/api/v1/undo', {}));
  document.getElementById('redo').addEventListener('click', () => edit('/api/v1/redo', {}));
  startQuestions();
  await refreshHistory();
  await refreshSegments();
  setInterval(async () => {
    try {
      await refreshHistory();
      document.getElementById('updated').textContent = `live · ${new Date().toLocaleTimeString()}`;
      showError(null);
    } catch (error) {
      showError(error);
    }
  }, POLL_MS);
}

start().catch(showError);
