// Pointer, touch and keyboard events on the video → the stream's input messages: coordinates
// normalised 0..1 over the picture (letterboxing excluded), pointer ids mapped to slots 0..9.
// With a mouse, Shift+drag adds a second finger mirrored around the picture centre (pinch).

const SLOTS = 10;

/** The displayed picture's rectangle inside a `object-fit: contain` video element. */
function pictureRect(video) {
  const box = video.getBoundingClientRect();
  const vw = video.videoWidth || box.width;
  const vh = video.videoHeight || box.height;
  const scale = Math.min(box.width / vw, box.height / vh);
  const w = vw * scale;
  const h = vh * scale;
  return { left: box.left + (box.width - w) / 2, top: box.top + (box.height - h) / 2, width: w, height: h };
}

/** Normalised (0..1) position of a client point over the picture, clamped to its edges. */
export function normalise(video, clientX, clientY) {
  const r = pictureRect(video);
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return { x: clamp((clientX - r.left) / r.width), y: clamp((clientY - r.top) / r.height) };
}

/** Wire pointer input from `video` to `send(message)`; returns a function that unwires it. */
export function attachPointer(video, send) {
  const slots = new Map(); // pointerId -> slot
  const mirrored = new Map(); // pointerId -> mirror slot (Shift+drag pinch)
  const free = () => {
    const used = new Set([...slots.values(), ...mirrored.values()]);
    for (let i = 0; i < SLOTS; i++) if (!used.has(i)) return i;
    return -1;
  };
  const contacts = (ev, down) => {
    const p = normalise(video, ev.clientX, ev.clientY);
    const list = [{ id: slots.get(ev.pointerId), x: p.x, y: p.y, down }];
    if (mirrored.has(ev.pointerId)) list.push({ id: mirrored.get(ev.pointerId), x: 1 - p.x, y: 1 - p.y, down });
    return list;
  };
  const onDown = (ev) => {
    const slot = free();
    if (slot < 0) return;
    ev.preventDefault();
    video.setPointerCapture(ev.pointerId);
    slots.set(ev.pointerId, slot);
    if (ev.pointerType === "mouse" && ev.shiftKey) {
      const m = free();
      if (m >= 0) mirrored.set(ev.pointerId, m);
    }
    send({ type: "touch", pointers: contacts(ev, true) });
  };
  const onMove = (ev) => {
    if (!slots.has(ev.pointerId)) return;
    ev.preventDefault();
    send({ type: "touch", pointers: contacts(ev, true) });
  };
  const onUp = (ev) => {
    if (!slots.has(ev.pointerId)) return;
    send({ type: "touch", pointers: contacts(ev, false) });
    slots.delete(ev.pointerId);
    mirrored.delete(ev.pointerId);
  };
  const handlers = { pointerdown: onDown, pointermove: onMove, pointerup: onUp, pointercancel: onUp };
  video.style.touchAction = "none";
  for (const [name, fn] of Object.entries(handlers)) video.addEventListener(name, fn);
  const noMenu = (ev) => ev.preventDefault();
  video.addEventListener("contextmenu", noMenu);
  return () => {
    for (const [name, fn] of Object.entries(handlers)) video.removeEventListener(name, fn);
    video.removeEventListener("contextmenu", noMenu);
  };
}

/** Browser key → the phone's key name, or null for keys the phone does not have. */
export function keyName(ev) {
  const named = { Enter: "ENTER", Backspace: "BACKSPACE", " ": "SPACE", Escape: "BACK", Home: "HOME" };
  if (named[ev.key]) return named[ev.key];
  if (/^[a-zA-Z0-9]$/.test(ev.key)) return ev.key.toUpperCase();
  return null;
}

/** Wire keyboard input on `target` to `send(message)`; returns the unwire function. */
export function attachKeyboard(target, send) {
  const handler = (down) => (ev) => {
    if (ev.repeat || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.target instanceof HTMLInputElement) return;
    const key = keyName(ev);
    if (!key) return;
    ev.preventDefault();
    send({ type: "key", key, down });
  };
  const down = handler(true);
  const up = handler(false);
  target.addEventListener("keydown", down);
  target.addEventListener("keyup", up);
  return () => {
    target.removeEventListener("keydown", down);
    target.removeEventListener("keyup", up);
  };
}
