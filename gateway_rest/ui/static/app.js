// The dashboard: follows /v1/discovery/watch (Server-Sent Events) and draws what it holds.
// Data is only ever written with textContent and attributes, never parsed as markup. Nothing
// polls: alerts are read once at start and again when an instance's critical-load flag changes.
"use strict";

(() => {
  const instances = new Map(); // "service/instance" -> REST instance record, in arrival order
  const alerts = new Map(); // "service/instance" -> alert record
  let pending = null; // a snapshot being received (RESET .. SYNCED)
  let alertRead = null; // the alerts request under way, if any
  let alertAgain = false; // another change came while it was under way
  let filterText = "";
  let resumeFrom = null; // the revision of the last numbered event (SSE id), for a new stream

  const $ = (id) => document.getElementById(id);
  const key = (record) => `${record.service_name}/${record.instance_id}`;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function clock(iso) {
    if (!iso) return "never";
    const moment = new Date(iso);
    return Number.isNaN(moment.getTime()) ? "?" : moment.toLocaleTimeString();
  }

  function address(record) {
    const host = String(record.host);
    return host.includes(":") ? `[${host}]:${record.port}` : `${host}:${record.port}`;
  }

  function percent(load) {
    const value = Number(load);
    return Number.isFinite(value) ? Math.max(0, Math.min(100, Math.round(value * 100))) : 0;
  }

  // -- the stream --------------------------------------------------------------------------

  function connect() {
    const query = resumeFrom === null ? "" : `?start_revision=${resumeFrom}`;
    const source = new EventSource(`/v1/discovery/watch${query}`);
    source.onopen = () => setConnection("live", "live");
    source.onerror = () => {
      // The browser reconnects by itself and resumes with Last-Event-ID. It gives up only
      // when the server answered with an error (a 503 while it shuts down): then a new
      // stream resumes from the last revision seen, a little later.
      const closed = source.readyState === EventSource.CLOSED;
      setConnection(closed ? "closed" : "reconnecting", closed ? "disconnected" : "reconnecting…");
      if (closed) setTimeout(connect, 2000);
    };
    source.onmessage = (message) => {
      if (message.lastEventId) resumeFrom = message.lastEventId;
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      receive(data);
    };
  }

  function setConnection(state, text) {
    const node = $("connection");
    node.dataset.state = state;
    node.textContent = text;
  }

  function receive(data) {
    switch (data.type) {
      case "RESET":
        pending = new Map();
        break;
      case "PUT":
        if (pending) pending.set(key(data.instance), data.instance);
        else put(data.instance);
        break;
      case "DELETE":
        if (pending) pending.delete(key(data.instance));
        else remove(data.instance);
        break;
      case "SYNCED":
        if (pending) {
          instances.clear();
          for (const [name, record] of pending) instances.set(name, record);
          pending = null;
          drawAll();
          readAlerts();
        }
        break;
      default: // PROGRESS: nothing changed
        break;
    }
    if (data.revision !== undefined) $("revision").textContent = String(data.revision);
  }

  function put(record) {
    const name = key(record);
    const before = instances.get(name);
    instances.set(name, record);
    drawInstance(record);
    if (!before || before.critical_load !== record.critical_load) readAlerts();
    else if (record.critical_load) updateAlertLoad(record);
    drawSummary();
  }

  function remove(record) {
    const name = key(record);
    const before = instances.get(name);
    if (!before) return;
    instances.delete(name);
    const row = rowOf(name);
    if (row) {
      const list = row.parentElement;
      row.remove();
      if (!list.firstElementChild) list.closest(".service").remove();
      else drawServiceHead(record.service_name);
    }
    if (before.critical_load) readAlerts();
    drawSummary();
  }

  // -- alerts: read when they may have changed -----------------------------------------

  async function readAlerts() {
    if (alertRead) {
      alertAgain = true;
      return;
    }
    do {
      alertAgain = false;
      alertRead = fetch("/v1/discovery/alerts", { headers: { Accept: "application/json" } });
      try {
        const response = await alertRead;
        if (response.ok) {
          const body = await response.json();
          alerts.clear();
          for (const entry of body.alerts || []) alerts.set(key(entry), entry);
          drawAlerts();
        }
      } catch {
        // The stream's next critical-load change reads them again.
      } finally {
        alertRead = null;
      }
    } while (alertAgain);
  }

  function updateAlertLoad(record) {
    const entry = alerts.get(key(record));
    if (entry && entry.load_percentage !== record.load_percentage) {
      entry.load_percentage = record.load_percentage;
      drawAlerts();
    }
  }

  // -- drawing -------------------------------------------------------------------------------

  function rowOf(name) {
    for (const row of document.querySelectorAll("[data-instance]")) {
      if (row.dataset.instance === name) return row;
    }
    return null;
  }

  function serviceBox(service) {
    for (const box of document.querySelectorAll(".service")) {
      if (box.dataset.service === service) return box;
    }
    const box = element("section", "service");
    box.dataset.service = service;
    const head = element("header", "service-head");
    head.append(element("h2", "service-name", service), element("span", "service-counts"));
    box.append(head, element("ul", "instances"));
    $("services").append(box);
    return box;
  }

  function drawServiceHead(service) {
    const box = serviceBox(service);
    let total = 0;
    let healthy = 0;
    for (const record of instances.values()) {
      if (record.service_name !== service) continue;
      total += 1;
      if (record.status === "healthy") healthy += 1;
    }
    box.querySelector(".service-counts").textContent = `${healthy}/${total} healthy`;
    box.dataset.degraded = String(healthy < total);
  }

  function drawInstance(record) {
    const name = key(record);
    const fresh = buildRow(record);
    const row = rowOf(name);
    if (row) row.replaceWith(fresh);
    else serviceBox(record.service_name).querySelector(".instances").append(fresh);
    if (filterText) applyFilterAll();
    drawServiceHead(record.service_name);
    $("services-empty").hidden = instances.size > 0;
  }

  function buildRow(record) {
    const row = element("li", "instance");
    const status = ["healthy", "unhealthy", "unknown"].includes(record.status)
      ? record.status
      : "unknown";
    row.dataset.instance = key(record);
    row.dataset.status = status;
    row.dataset.critical = String(Boolean(record.critical_load));

    const title = element("div", "title");
    title.append(element("span", `badge ${status}`, status));
    title.append(element("span", "instance-id", record.instance_id));
    if (record.critical_load) title.append(element("span", "critical-mark", "critical load"));
    title.append(element("span", "address", address(record)));

    const load = percent(record.load_percentage);
    const meter = element("div", "load");
    const bar = element("div", "bar");
    const fill = element("div", "fill");
    fill.style.width = `${load}%`;
    bar.append(fill);
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(load));
    bar.setAttribute("aria-label", "load");
    meter.append(bar, element("span", "load-text", `${load}%`));

    const times = element("dl", "times");
    const probe = record.health_endpoint ? clock(record.last_health_check) : "not probed";
    for (const [label, value, iso] of [
      ["heartbeat", clock(record.last_heartbeat), record.last_heartbeat],
      ["probe", probe, record.last_health_check],
    ]) {
      const term = element("dt", "", label);
      const detail = element("dd", "", value);
      if (iso) detail.title = iso;
      times.append(term, detail);
    }
    if (record.health_endpoint) {
      times.append(element("dt", "", "path"), element("dd", "path", record.health_endpoint));
    }

    row.append(title, meter, times);
    const metadata = Object.entries(record.metadata || {});
    if (metadata.length) {
      const list = element("ul", "metadata");
      for (const [name, value] of metadata) list.append(element("li", "", `${name}=${value}`));
      row.append(list);
    }
    return row;
  }

  function drawAll() {
    $("services").replaceChildren();
    for (const record of instances.values()) {
      serviceBox(record.service_name).querySelector(".instances").append(buildRow(record));
    }
    for (const box of document.querySelectorAll(".service")) drawServiceHead(box.dataset.service);
    $("services-empty").hidden = instances.size > 0;
    applyFilterAll();
    drawSummary();
  }

  function drawSummary() {
    let healthy = 0;
    let unhealthy = 0;
    const services = new Set();
    for (const record of instances.values()) {
      services.add(record.service_name);
      if (record.status === "healthy") healthy += 1;
      else if (record.status === "unhealthy") unhealthy += 1;
    }
    $("count-services").textContent = String(services.size);
    $("count-instances").textContent = String(instances.size);
    $("count-healthy").textContent = String(healthy);
    $("count-unhealthy").textContent = String(unhealthy);
    $("count-alerts").textContent = String(alerts.size);
    $("services-empty").hidden = instances.size > 0;
  }

  function drawAlerts() {
    const list = $("alerts");
    list.replaceChildren();
    for (const entry of alerts.values()) {
      const item = element("li", "alert");
      item.dataset.alert = key(entry);
      item.append(element("span", "alert-name", key(entry)));
      item.append(
        element(
          "span",
          "alert-load",
          `${percent(entry.load_percentage)}% ≥ ${percent(entry.threshold)}%`,
        ),
      );
      const since = element("span", "alert-since", `since ${clock(entry.since)}`);
      since.title = entry.since;
      item.append(since);
      list.append(item);
    }
    $("alerts-empty").hidden = alerts.size > 0;
    drawSummary();
  }

  // -- filter --------------------------------------------------------------------------------

  function matches(row) {
    if (!filterText) return true;
    return row.textContent.toLowerCase().includes(filterText);
  }

  function applyFilter(row) {
    row.hidden = !matches(row);
  }

  function applyFilterAll() {
    for (const row of document.querySelectorAll("[data-instance]")) applyFilter(row);
    for (const box of document.querySelectorAll(".service")) {
      box.hidden = !box.querySelector("[data-instance]:not([hidden])");
    }
  }

  $("filter").addEventListener("input", (event) => {
    filterText = event.target.value.trim().toLowerCase();
    applyFilterAll();
  });

  readAlerts();
  connect();
})();
