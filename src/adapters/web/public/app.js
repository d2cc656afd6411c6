// Curio playground: one conversation per tab, the same commands as the bots, replies streamed
// over Server-Sent Events from POST /api/run. Plain JS, no build step.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const log = $('log');
  const input = $('input');
  const sendButton = $('send');
  const attachment = $('attachment');
  const thumb = $('thumb');
  const fileName = $('file-name');
  const overlay = $('drop-overlay');

  const randomId = () => {
    const a = new Uint8Array(12);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(36).padStart(2, '0')).join('').slice(0, 16);
  };

  let clientId = sessionStorage.getItem('curio.clientId');
  if (!clientId) {
    clientId = randomId();
    sessionStorage.setItem('curio.clientId', clientId);
  }

  const state = {
    info: { maxImageBytes: 25 * 1024 * 1024, maxQuizRounds: 5, model: '' },
    conversationId: `web:${randomId()}`,
    /** The current image: {data: base64, name, url (object URL, images only)}. */
    image: null,
    /** A reply exists in this conversation (plain text continues it). */
    started: false,
    /** Quiz rounds shown so far in this conversation (numbering for "Another question"). */
    quizRounds: 0,
    busy: false,
  };

  const sizeText = (n) => (n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MB` : `${Math.ceil(n / 1024)} KB`);

  fetch('/api/info')
    .then((r) => r.json())
    .then((info) => {
      state.info = info;
      $('model').textContent = info.model;
    })
    .catch(() => {});

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function systemLine(text) {
    log.appendChild(el('div', 'msg system', text));
    scrollDown();
  }

  // ---- the image -------------------------------------------------------------------------

  function readAsBase64(file) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(String(r.result).replace(/^data:[^,]*,/, ''));
      r.onerror = () => reject(r.error);
      r.readAsDataURL(file);
    });
  }

  async function setImage(file) {
    if (!file) return;
    if (file.size > state.info.maxImageBytes) {
      const bubble = botBubble();
      showError(bubble, `The file is too large (${sizeText(file.size)}; the limit is ${sizeText(state.info.maxImageBytes)}).`);
      return;
    }
    const data = await readAsBase64(file);
    if (state.image && state.image.url) URL.revokeObjectURL(state.image.url);
    const isImage = /^image\//.test(file.type);
    state.image = { data, name: file.name || 'pasted image', url: isImage ? URL.createObjectURL(file) : '' };
    // A new image starts a new conversation.
    state.conversationId = `web:${randomId()}`;
    state.started = false;
    state.quizRounds = 0;
    removeMoreButtons();
    attachment.hidden = false;
    if (state.image.url) thumb.src = state.image.url;
    else thumb.removeAttribute('src');
    fileName.textContent = `${state.image.name} (${sizeText(file.size)})`;
    systemLine(`New conversation about ${state.image.name}. Try /describe, /ask <question> or /quiz.`);
    input.focus();
  }

  function clearImage() {
    if (state.image && state.image.url) URL.revokeObjectURL(state.image.url);
    state.image = null;
    attachment.hidden = true;
    thumb.removeAttribute('src');
    fileName.textContent = '';
  }

  $('file').addEventListener('change', (e) => {
    const f = e.target.files && e.target.files[0];
    e.target.value = '';
    void setImage(f);
  });
  $('clear-image').addEventListener('click', clearImage);
  $('new-conversation').addEventListener('click', () => {
    clearImage();
    state.conversationId = `web:${randomId()}`;
    state.started = false;
    state.quizRounds = 0;
    removeMoreButtons();
    systemLine('New conversation. Drop or paste an image to begin.');
  });

  let dragDepth = 0;
  window.addEventListener('dragenter', (e) => {
    if (!e.dataTransfer || !Array.from(e.dataTransfer.types).includes('Files')) return;
    dragDepth++;
    overlay.hidden = false;
  });
  window.addEventListener('dragleave', () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) overlay.hidden = true;
  });
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => {
    e.preventDefault();
    dragDepth = 0;
    overlay.hidden = true;
    const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) void setImage(f);
  });
  document.addEventListener('paste', (e) => {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === 'file') {
        const f = item.getAsFile();
        if (f) {
          e.preventDefault();
          void setImage(f);
          return;
        }
      }
    }
  });

  // ---- replies -----------------------------------------------------------------------------

  function userBubble(text, withImage) {
    const b = el('div', 'msg user');
    if (withImage && state.image && state.image.url) {
      const img = el('img');
      img.src = state.image.url;
      img.alt = state.image.name;
      b.appendChild(img);
    } else if (withImage && state.image) {
      b.appendChild(el('div', 'file', `📄 ${state.image.name}`));
    }
    b.appendChild(el('div', 'text', text));
    log.appendChild(b);
    scrollDown();
  }

  function botBubble() {
    const b = el('div', 'msg bot');
    b.appendChild(el('div', 'status'));
    b.appendChild(el('div', 'answer'));
    b.appendChild(el('div', 'error'));
    b.appendChild(el('div', 'stats'));
    log.appendChild(b);
    scrollDown();
    return b;
  }

  const part = (bubble, cls) => bubble.querySelector(`:scope > .${cls}`);

  function setStatus(bubble, text) {
    part(bubble, 'status').textContent = text;
  }

  function showError(bubble, message, notice) {
    setStatus(bubble, '');
    const e = part(bubble, 'error');
    e.textContent = message;
    e.classList.toggle('notice', !!notice);
    bubble.dataset.state = 'error';
    scrollDown();
  }

  function renderAnswer(bubble, text) {
    const a = part(bubble, 'answer');
    if (a.textContent !== text) a.textContent = text;
  }

  function renderQuiz(bubble, reply, offset) {
    const a = part(bubble, 'answer');
    let quiz = a.querySelector(':scope > .quiz');
    if (!quiz) {
      a.textContent = '';
      quiz = el('div', 'quiz');
      quiz.appendChild(el('div', 'description'));
      a.appendChild(quiz);
    }
    const desc = quiz.querySelector(':scope > .description');
    if (desc.textContent !== reply.description) desc.textContent = reply.description;
    reply.rounds.forEach((r, i) => {
      let round = quiz.querySelectorAll(':scope > .round')[i];
      if (!round) {
        round = el('div', 'round');
        round.appendChild(el('div', 'question'));
        const ans = el('div', 'answer-text');
        ans.hidden = true;
        round.appendChild(ans);
        const reveal = el('button', 'reveal', 'Reveal answer');
        reveal.type = 'button';
        reveal.hidden = true;
        reveal.addEventListener('click', () => {
          const show = ans.hidden;
          ans.hidden = !show;
          reveal.textContent = show ? 'Hide answer' : 'Reveal answer';
        });
        round.appendChild(reveal);
        quiz.appendChild(round);
      }
      const q = `Q${offset + i + 1}: ${r.question}`;
      const qEl = round.querySelector('.question');
      if (qEl.textContent !== q) qEl.textContent = q;
      const ansEl = round.querySelector('.answer-text');
      if (ansEl.textContent !== r.answer) ansEl.textContent = r.answer;
      round.querySelector('.reveal').hidden = !r.answer;
    });
  }

  function renderReply(bubble, reply, offset) {
    if (reply.kind === 'quiz') renderQuiz(bubble, reply, offset);
    else renderAnswer(bubble, reply.text);
    scrollDown();
  }

  function removeMoreButtons() {
    for (const b of log.querySelectorAll('button.more')) b.remove();
  }

  function statsText(s) {
    if (s.cached) return 'answered from cache';
    const secs = (s.totalMs / 1000).toFixed(1);
    return `${s.tokens} tokens · ${secs} s · ${s.tokensPerSecond.toFixed(1)} tokens/s`;
  }

  // ---- sending -----------------------------------------------------------------------------

  function setBusy(busy) {
    state.busy = busy;
    sendButton.disabled = busy;
    for (const b of log.querySelectorAll('button.more')) b.disabled = busy;
  }

  async function send(text) {
    const trimmed = text.trim();
    if (!trimmed || state.busy) return;
    const isCommand = trimmed.startsWith('/');
    const name = isCommand ? trimmed.slice(1).split(/\s/)[0].toLowerCase() : '';
    const needsImage = name === 'describe' || name === 'ask' || name === 'quiz';
    // The image goes with describe/ask/quiz, and with the first plain message about a new image.
    const withImage = !!state.image && (needsImage || (!isCommand && !state.started));
    userBubble(name === 'more' ? 'Another question' : trimmed, withImage);
    const bubble = botBubble();
    if (needsImage && !state.image) {
      showError(bubble, 'Drop, paste or choose an image first.');
      return;
    }
    const isMore = name === 'more';
    const isNewQuiz = name === 'quiz';
    const offset = isMore ? state.quizRounds : 0;
    const body = {
      conversationId: state.conversationId,
      clientId,
      input: trimmed,
      ...(withImage ? { image: { data: state.image.data, name: state.image.name } } : {}),
    };
    setBusy(true);
    setStatus(bubble, 'Sending…');
    bubble.dataset.state = 'pending';
    let finished = false;
    try {
      const res = await fetch('/api/run', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const type = res.headers.get('content-type') || '';
      if (!res.ok || !type.startsWith('text/event-stream')) {
        const j = await res.json().catch(() => null);
        showError(bubble, (j && j.error && j.error.message) || `The server answered ${res.status}.`);
        return;
      }
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = frame
            .split('\n')
            .filter((l) => l.startsWith('data: '))
            .map((l) => l.slice(6))
            .join('\n');
          if (!data) continue;
          const ev = JSON.parse(data);
          finished = onEvent(bubble, ev, { offset, isMore, isNewQuiz, name }) || finished;
        }
      }
      if (!finished) showError(bubble, 'The connection closed before the answer was finished. Please try again.');
    } catch (err) {
      showError(bubble, `Could not reach Curio (${err && err.message ? err.message : err}).`);
    } finally {
      setBusy(false);
    }
  }

  /** Applies one reply event; true when it was the last one. */
  function onEvent(bubble, ev, ctx) {
    switch (ev.type) {
      case 'queued':
        setStatus(bubble, ev.position > 1 ? `Waiting in the queue — position ${ev.position}` : 'Waiting in the queue — next up');
        bubble.dataset.state = 'queued';
        bubble.dataset.position = String(ev.position);
        return false;
      case 'started':
        setStatus(bubble, 'Thinking…');
        bubble.dataset.state = 'running';
        return false;
      case 'progress':
        setStatus(bubble, '');
        bubble.dataset.state = 'streaming';
        renderReply(bubble, ev.reply, ctx.offset);
        return false;
      case 'done': {
        setStatus(bubble, '');
        renderReply(bubble, ev.reply, ctx.offset);
        part(bubble, 'stats').textContent = ev.stats.tokens > 0 || ev.stats.cached ? statsText(ev.stats) : '';
        bubble.dataset.state = 'done';
        state.started = true;
        if (ev.reply.kind === 'quiz' && ctx.isMore && ev.reply.rounds.length === 0) {
          // The model's context is full: no room for another question.
          removeMoreButtons();
          showError(bubble, 'No room for another question: this conversation is as long as the model allows. Start a new one with /quiz.', true);
          bubble.dataset.state = 'done';
        } else if (ev.reply.kind === 'quiz') {
          state.quizRounds = (ctx.isNewQuiz ? 0 : state.quizRounds) + ev.reply.rounds.length;
          removeMoreButtons();
          const more = el('button', 'more', 'Another question');
          more.type = 'button';
          more.addEventListener('click', () => void send('/more'));
          bubble.appendChild(more);
        } else if (ctx.name === 'describe' || ctx.name === 'ask') {
          removeMoreButtons(); // a new describe/ask conversation replaced the quiz
        }
        scrollDown();
        return true;
      }
      case 'refused':
        showError(bubble, ev.message, true);
        return true;
      case 'failed':
        showError(bubble, ev.message);
        return true;
      default:
        return false;
    }
  }

  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value;
    if (!text.trim() || state.busy) return;
    input.value = '';
    void send(text);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
})();
