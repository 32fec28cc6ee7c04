// Building DOM from data. Strings always become text nodes, never HTML, so chat
// content, bot replies, descriptions and reasons cannot inject markup.

// h("li", {className: "x", dataset: {id: 1}, onclick: f}, "text", child, ...)
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else if (key === "className" || key === "textContent" || key === "value") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`no element #${id}`);
  return el;
}

let nextId = 0;
// A unique id for label/input pairs built at run time.
export function uid(prefix) {
  nextId += 1;
  return `${prefix}-${nextId}`;
}
