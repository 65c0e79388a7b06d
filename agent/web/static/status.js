// Warden status page: refresh the server-rendered panels every two seconds and send the
// operator's actions (with the bearer token kept in this tab's sessionStorage, after a
// confirmation). Everything else is HTML from the agent.
(() => {
  "use strict";
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "warden-token";
  const $ = (id) => document.getElementById(id);
  const panels = $("panels");
  const conn = $("conn");
  const notice = $("notice");
  const dialog = $("confirm");
  let pending = null;
  let failingSince = null;
  let busy = false;
  let lastHtml = null;

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  const authHeaders = () => (token() ? { Authorization: "Bearer " + token() } : {});

  function showToken() {
    document.body.classList.toggle("has-token", token() !== "");
  }

  function setConn(text, state) {
    conn.textContent = text;
    conn.dataset.state = state;
  }

  function say(text, state) {
    notice.textContent = text;
    notice.dataset.state = state;
    notice.hidden = false;
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const when = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(when.getTime())) {
        el.title = el.getAttribute("datetime");
        el.textContent = when.toLocaleTimeString();
      }
    });
  }

  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const resp = await fetch("/ui/panels", { headers: authHeaders(), cache: "no-store" });
      if (resp.status === 401) {
        setConn("this agent needs the API token to show its status", "warn");
        return;
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const html = await resp.text();
      if (html !== lastHtml) {  // unchanged panels are left alone: a selection survives
        lastHtml = html;
        panels.innerHTML = html;
        localTimes(panels);
      }
      failingSince = null;
      setConn("live · " + new Date().toLocaleTimeString(), "ok");
    } catch (err) {
      failingSince = failingSince || new Date();
      setConn(
        "agent not reachable since " + failingSince.toLocaleTimeString() +
          " (is `warden up` running?); retrying",
        "bad",
      );
    } finally {
      busy = false;
    }
  }

  function outcome(data) {
    if (data.release && data.previous) return "going from " + data.previous + " to " + data.release;
    if ("maintenance" in data) {
      return "maintenance " + (data.maintenance ? "on" : "off") +
        ", healing " + (data.frozen ? "frozen" : "active");
    }
    return "accepted";
  }

  async function act(path, body, verb) {
    try {
      const resp = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify(body),
      });
      const data = await resp.json().catch(() => ({}));
      if (resp.status === 401 || resp.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        showToken();
        say(verb + " refused: " + (data.detail || resp.status) + ". Enter the right token.", "bad");
      } else if (!resp.ok) {
        say(verb + " refused: " + (data.detail || "HTTP " + resp.status), "bad");
      } else {
        say(verb + ": " + outcome(data), "ok");
      }
    } catch (err) {
      say(verb + " failed: the agent did not answer (" + err + ")", "bad");
    }
    refresh();
  }

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-action]");
    if (!button || !token()) return;
    pending = {
      path: button.dataset.path,
      body: JSON.parse(button.dataset.body),
      verb: button.dataset.verb,
    };
    $("confirm-text").textContent = button.dataset.confirm;
    $("confirm-ok").textContent = button.dataset.verb;
    dialog.returnValue = "";
    dialog.showModal();
  });

  dialog.addEventListener("close", () => {
    const chosen = pending;
    pending = null;
    if (dialog.returnValue === "ok" && chosen) act(chosen.path, chosen.body, chosen.verb);
  });

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("token-input");
    if (input.value.trim()) sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    showToken();
    refresh();
  });

  $("lock").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showToken();
  });

  document.addEventListener("visibilitychange", refresh);
  showToken();
  localTimes(panels);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
