// Sidecar's page: the cluster state and this host's HAProxy, live from /api/ui/events.
// Plain DOM, no framework. The services table is built once and then updated by diff: a Map
// from instance key ("<Hostname>/<ID>") to its row, a signature per cell, and only the cells
// whose signature changed are touched. Untrusted text (names, images, hosts, reasons) only
// ever goes through textContent.
(() => {
  "use strict";

  const EVENTS_URL = "/api/ui/events";
  const TOKEN_KEY = "sidecar.apiToken";
  // Go's ServiceStatus values, by number.
  const STATUS_NAMES = ["ALIVE", "TOMBSTONE", "UNHEALTHY", "UNKNOWN", "DRAINING"];
  const STATUS_TONE = {
    ALIVE: "ok",
    UNHEALTHY: "bad",
    UNKNOWN: "neutral",
    DRAINING: "warn",
    TOMBSTONE: "dead",
  };
  const HAPROXY_TONE = { UP: "ok", DOWN: "bad", MAINT: "info", DRAIN: "warn", NOLB: "warn" };
  const MEMBER_TONE = { alive: "ok", suspect: "warn", dead: "bad", left: "neutral" };
  const NOT_IN_HAPROXY = "not in HAProxy";
  // [data-field, column label]; the order of the cells in every instance row.
  const COLUMNS = [
    ["status", "Status"],
    ["host", "Host"],
    ["id", "ID"],
    ["image", "Image"],
    ["ports", "Ports"],
    ["haproxy", "HAProxy"],
    ["check", "Check"],
    ["updated", "Updated"],
    ["action", "Actions"],
  ];
  // How long a drain's button says "draining…" when no DRAINING state arrives.
  const DRAIN_WAIT_MS = 30000;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 30000;

  const model = {
    state: null,
    local: null,
    stateDirty: false,
    localDirty: false,
    rowsDirty: false,
    filtersDirty: false,
    frame: 0,
    stateRendered: false,
    localRendered: false,
    localHost: "",
    haproxyIndex: new Map(),
    hostsSignature: "",
    membersSignature: null,
    rejectionsSignature: null,
    planSignature: null,
  };
  const rows = new Map(); // instance key -> row record
  const groups = new Map(); // service name -> group record
  const groupOrder = []; // group records sorted by name
  const ageCells = new Map(); // <time> element -> {ms, text}; the ticker refreshes their text
  const drainPending = new Map(); // instance key -> deadline (Date.now() ms)
  const rowMessages = new Map(); // instance key -> message shown by its drain button
  const filters = { name: "", host: "", status: "" };
  const connection = { state: "", source: null, retryMs: RETRY_MIN_MS };
  const dom = {};
  let rowTemplate = null;

  // ------------------------------------------------------------------ small helpers

  function byId(id) {
    return document.getElementById(id);
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function badge(text, tone) {
    return make("span", `badge tone-${tone}`, text);
  }

  function asText(value) {
    return value === undefined || value === null ? "" : String(value);
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function compareText(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function compareRecords(a, b) {
    return compareText(a.host, b.host) || compareText(a.id, b.id);
  }

  /** Return the index of the first item of the sorted `items` not before `item`. */
  function lowerBound(items, item, compare) {
    let low = 0;
    let high = items.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (compare(items[middle], item) < 0) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** Return the nodes with a space between each (block lines then read apart as text). */
  function spaced(nodes) {
    return nodes.flatMap((node, index) => (index ? [" ", node] : [node]));
  }

  function statusName(code) {
    return STATUS_NAMES[code] ?? (code === undefined || code === null ? "UNKNOWN" : String(code));
  }

  // ------------------------------------------------------------------ time

  /** Return the ms since the epoch of an RFC 3339 time, or null for Go's zero time / junk. */
  function parseTime(text) {
    if (typeof text !== "string" || text === "" || text.startsWith("0001-01-01")) return null;
    const ms = Date.parse(text.replace(/(\.\d{3})\d+/, "$1"));
    return Number.isNaN(ms) ? null : ms;
  }

  function spanText(seconds) {
    if (seconds < 60) return `${seconds} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours} h`;
    return `${Math.floor(hours / 24)} d`;
  }

  /** Return "4 s ago", "3 min ago", ... ("in 5 s" for a clock ahead of ours). */
  function agoText(ms, now) {
    if (ms === null) return "never";
    const seconds = Math.round((now - ms) / 1000);
    if (seconds < -1) return `in ${spanText(-seconds)}`;
    return `${spanText(Math.max(0, seconds))} ago`;
  }

  /** Return a <time> showing the age of `ms` (ticking), with the absolute time as title. */
  function ageElement(ms) {
    const time = make("time", "age");
    if (ms === null) {
      time.textContent = "never";
      return time;
    }
    const date = new Date(ms);
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
    const text = agoText(ms, Date.now());
    time.textContent = text;
    ageCells.set(time, { ms, text });
    return time;
  }

  function forgetAges(root) {
    for (const time of root.querySelectorAll("time.age")) ageCells.delete(time);
  }

  /** Empty a cell, forgetting its ticking ages. */
  function clearCell(cell) {
    if (cell.firstChild) {
      forgetAges(cell);
      cell.replaceChildren();
    }
  }

  function tick() {
    const now = Date.now();
    for (const [time, age] of ageCells) {
      const text = agoText(age.ms, now);
      if (text !== age.text) {
        age.text = text;
        time.textContent = text;
      }
    }
    for (const [key, deadline] of drainPending) {
      if (now >= deadline) {
        drainPending.delete(key);
        rowMessages.set(key, "Drain accepted, but no DRAINING state has arrived yet.");
        model.rowsDirty = true;
        scheduleRender();
      }
    }
  }

  // ------------------------------------------------------------------ instance rows

  /** Return what a row shows for one instance, with a signature per cell. */
  function instanceView(service, host, id, key) {
    const local = model.local;
    const status = statusName(service.Status);
    const isLocal = host !== "" && host === model.localHost;
    const image = asText(service.Image);
    const ports = Array.isArray(service.Ports) ? service.Ports.filter(isObject) : [];
    const portsSignature = ports
      .map((p) => `${asText(p.ServicePort)}>${asText(p.IP)}:${asText(p.Port)}/${asText(p.Type)}`)
      .join(",");
    const haproxy = haproxyView(ports, key);
    let check;
    let checkSignature = "-";
    if (isLocal) {
      const checks = local && isObject(local.checks) ? local.checks : {};
      check = isObject(checks[id]) ? checks[id] : null;
      checkSignature = local ? JSON.stringify(check) : "…";
    }
    const updated = asText(service.Updated);
    const canDrain = isLocal && status === "ALIVE";
    const pending = drainPending.has(key);
    const message = rowMessages.get(key) ?? "";
    return {
      status,
      host,
      id,
      image,
      ports,
      haproxy,
      check,
      isLocal,
      updated,
      canDrain,
      pending,
      message,
      signatures: [
        status,
        isLocal ? `${host}*` : host,
        id,
        image,
        portsSignature,
        haproxy.signature,
        checkSignature,
        updated,
        `${canDrain}|${pending}|${message}`,
      ],
    };
  }

  /** Return what this host's HAProxy does with an instance, per service port. */
  function haproxyView(ports, key) {
    const local = model.local;
    if (!local) return { items: [], note: "", signature: "…" };
    const haproxy = local.haproxy;
    if (!isObject(haproxy)) {
      return { items: [], note: "not managed here", signature: "unmanaged" };
    }
    const note = haproxy.error ? "stats unavailable" : "";
    const found = model.haproxyIndex.get(key) ?? [];
    const items = found.map((server) => ({
      state: asText(server.status) || "?",
      port: asText(server.service_port),
      title:
        `${asText(server.backend)}/${asText(server.server)}` +
        (server.sessions === undefined ? "" : `, ${asText(server.sessions)} sessions`),
    }));
    if (items.length > 0) {
      const served = new Set(items.map((item) => item.port));
      for (const port of ports) {
        const servicePort = asText(port.ServicePort);
        if (port.ServicePort && !served.has(servicePort)) {
          served.add(servicePort);
          items.push({ state: NOT_IN_HAPROXY, port: servicePort, title: "" });
        }
      }
    }
    const signature =
      items.map((item) => `${item.port}:${item.state}:${item.title}`).join(",") + "|" + note;
    return { items, note, signature };
  }

  function fillStatus(cell, view) {
    cell.replaceChildren(badge(view.status, STATUS_TONE[view.status] ?? "neutral"));
  }

  function fillHost(cell, view) {
    cell.replaceChildren(view.host);
    if (view.isLocal) cell.append(" ", make("span", "this-host", "this host"));
  }

  function fillId(cell, view) {
    const code = make("code", "", view.id);
    code.title = view.id;
    cell.replaceChildren(code);
  }

  function splitImage(image) {
    const at = image.indexOf("@");
    if (at >= 0) return [image.slice(0, at), image.slice(at, at + 19) + "…"];
    const colon = image.lastIndexOf(":");
    if (colon > image.lastIndexOf("/")) return [image.slice(0, colon), image.slice(colon + 1)];
    return [image, ""];
  }

  function fillImage(cell, view) {
    if (!view.image) {
      cell.replaceChildren(make("span", "muted", "—"));
      cell.removeAttribute("title");
      return;
    }
    const [name, tag] = splitImage(view.image);
    const nameNode = make("span", "image-name", name);
    cell.replaceChildren(nameNode);
    if (tag) cell.append(" ", make("span", "tag", tag));
    cell.title = view.image;
  }

  function fillPorts(cell, view) {
    if (view.ports.length === 0) {
      cell.replaceChildren(make("span", "muted", "—"));
      return;
    }
    cell.replaceChildren(
      ...spaced(view.ports.map((port) => {
        const ip = asText(port.IP);
        const address = `${ip.includes(":") ? `[${ip}]` : ip}:${asText(port.Port)}`;
        const type = port.Type && port.Type !== "tcp" ? ` ${asText(port.Type)}` : "";
        const line = make("span", "port");
        if (port.ServicePort) line.append(`${asText(port.ServicePort)} → `);
        line.append(make("span", "address", address), type);
        if (!port.ServicePort) line.title = "no service port";
        return line;
      })),
    );
  }

  function fillHaproxy(cell, view) {
    const { items, note } = view.haproxy;
    if (items.length === 0) {
      cell.replaceChildren(make("span", "muted", NOT_IN_HAPROXY));
      if (note) cell.append(" ", make("span", "muted small", `(${note})`));
      return;
    }
    cell.replaceChildren(
      ...spaced(items.map((item) => {
        const line = make("span", "hp-line");
        const mark =
          item.state === NOT_IN_HAPROXY
            ? make("span", "muted", item.state)
            : badge(item.state, HAPROXY_TONE[item.state] ?? "neutral");
        line.append(mark);
        if (items.length > 1) line.append(" ", make("span", "muted small", item.port));
        if (item.title) line.title = item.title;
        return line;
      })),
    );
  }

  function fillCheck(cell, view) {
    clearCell(cell);
    if (!view.isLocal) {
      cell.append(make("span", "muted", "—"));
      cell.title = "Checked on its own host";
      return;
    }
    cell.removeAttribute("title");
    const check = view.check;
    if (!check) {
      cell.append(make("span", "muted", model.local ? "no result yet" : "…"));
      return;
    }
    const result =
      check.healthy === true ? "healthy" : check.healthy === false ? "unhealthy" : "unknown";
    const tone = check.healthy === true ? "ok" : check.healthy === false ? "bad" : "neutral";
    const head = make("span", "check-head");
    head.append(badge(result, tone));
    if (check.at) head.append(" ", ageElement(parseTime(check.at)));
    cell.append(head);
    const how = [asText(check.type), asText(check.args)].filter(Boolean).join(" ");
    if (how) cell.append(make("span", "check-how small", how));
    if (check.detail) cell.append(make("span", "check-detail small muted", asText(check.detail)));
  }

  function fillUpdated(cell, view) {
    clearCell(cell);
    cell.append(ageElement(parseTime(view.updated)));
  }

  function fillAction(cell, view, record) {
    cell.replaceChildren();
    if (view.canDrain) {
      const button = make("button", "drain", view.pending ? "draining…" : "Drain");
      button.type = "button";
      button.dataset.action = "drain";
      button.dataset.key = record.key;
      button.disabled = view.pending;
      button.setAttribute("aria-label", `Drain ${record.name} ${view.id}`);
      cell.append(button);
    }
    if (view.message) cell.append(make("span", "row-message", view.message));
  }

  const FILLERS = [
    fillStatus,
    fillHost,
    fillId,
    fillImage,
    fillPorts,
    fillHaproxy,
    fillCheck,
    fillUpdated,
    fillAction,
  ];

  function makeRowTemplate() {
    const row = document.createElement("tr");
    row.className = "instance";
    // The service's name as the row's header: read by screen readers, not shown (the group
    // header above says it).
    const header = document.createElement("th");
    header.scope = "row";
    header.className = "visually-hidden";
    header.dataset.field = "name";
    row.append(header);
    for (const [field, label] of COLUMNS) {
      const cell = document.createElement("td");
      cell.dataset.field = field;
      cell.dataset.label = label;
      row.append(cell);
    }
    return row;
  }

  function createRecord(key, name, host, id) {
    const row = rowTemplate.cloneNode(true);
    row.dataset.instance = key;
    row.firstChild.textContent = name;
    return {
      key,
      name,
      host,
      id,
      row,
      cells: Array.from(row.children).slice(1),
      signatures: new Array(COLUMNS.length).fill(null),
      status: "",
      visible: true,
      group: null,
    };
  }

  /** Update the cells whose signature changed; return whether the status changed. */
  function updateRecord(record, view) {
    for (let i = 0; i < FILLERS.length; i++) {
      if (record.signatures[i] !== view.signatures[i]) {
        FILLERS[i](record.cells[i], view, record);
        record.signatures[i] = view.signatures[i];
      }
    }
    const changed = record.status !== view.status;
    record.status = view.status;
    return changed;
  }

  function createGroup(name) {
    const body = make("tbody", "group");
    body.dataset.service = name;
    const headerRow = make("tr", "group-row");
    const header = make("th");
    header.scope = "rowgroup";
    header.colSpan = COLUMNS.length + 1;
    const meta = make("span", "group-meta");
    header.append(make("span", "group-name", name), " ", meta);
    headerRow.append(header);
    body.append(headerRow);
    return { name, body, meta, records: [], visible: true };
  }

  function updateGroupMeta(group) {
    const counts = new Map();
    for (const record of group.records) counts.set(record.status, (counts.get(record.status) ?? 0) + 1);
    const total = group.records.length;
    const parts = STATUS_NAMES.filter((s) => counts.has(s)).map((s) => `${counts.get(s)} ${s}`);
    for (const [status, count] of counts) {
      if (!STATUS_NAMES.includes(status)) parts.push(`${count} ${status}`);
    }
    const text = `${total} instance${total === 1 ? "" : "s"}: ${parts.join(", ")}`;
    if (group.meta.textContent !== text) group.meta.textContent = text;
  }

  function removeRecord(record, dirtyGroups) {
    forgetAges(record.row);
    record.row.remove();
    rows.delete(record.key);
    drainPending.delete(record.key);
    rowMessages.delete(record.key);
    const group = record.group;
    const index = group.records.indexOf(record);
    if (index >= 0) group.records.splice(index, 1);
    if (group.records.length === 0) {
      group.body.remove();
      groups.delete(group.name);
      groupOrder.splice(groupOrder.indexOf(group), 1);
      dirtyGroups.delete(group);
    } else {
      dirtyGroups.add(group);
    }
  }

  /** Put new rows in their groups (new groups in name order), keeping every order sorted. */
  function placeRecords(added, dirtyGroups) {
    const newGroups = [];
    const byGroup = new Map();
    for (const record of added) {
      let group = groups.get(record.name);
      if (!group) {
        group = createGroup(record.name);
        groups.set(record.name, group);
        newGroups.push(group);
      }
      record.group = group;
      dirtyGroups.add(group);
      if (!byGroup.has(group)) byGroup.set(group, []);
      byGroup.get(group).push(record);
    }
    for (const [group, records] of byGroup) {
      if (group.records.length === 0) {
        records.sort(compareRecords);
        group.records = records;
        group.body.append(...records.map((record) => record.row));
        continue;
      }
      for (const record of records) {
        const index = lowerBound(group.records, record, compareRecords);
        const next = group.records[index];
        group.body.insertBefore(record.row, next ? next.row : null);
        group.records.splice(index, 0, record);
      }
    }
    if (newGroups.length === 0) return;
    const byName = (a, b) => compareText(a.name, b.name);
    if (groupOrder.length === 0) {
      newGroups.sort(byName);
      groupOrder.push(...newGroups);
      const fragment = document.createDocumentFragment();
      fragment.append(...newGroups.map((group) => group.body));
      dom.services.append(fragment);
      return;
    }
    for (const group of newGroups) {
      const index = lowerBound(groupOrder, group, byName);
      const next = groupOrder[index];
      dom.services.insertBefore(group.body, next ? next.body : null);
      groupOrder.splice(index, 0, group);
    }
  }

  /** Bring the services table in line with the state: touch only what changed. */
  function renderInstances() {
    const state = model.state;
    const servers = isObject(state) && isObject(state.Servers) ? state.Servers : {};
    const seen = new Set();
    const added = [];
    const dirtyGroups = new Set();
    for (const serverName of Object.keys(servers)) {
      const server = servers[serverName];
      const services = isObject(server) && isObject(server.Services) ? server.Services : {};
      for (const serviceId of Object.keys(services)) {
        const service = services[serviceId];
        if (!isObject(service)) continue;
        const host = asText(service.Hostname ?? serverName);
        const id = asText(service.ID ?? serviceId);
        const name = asText(service.Name);
        const key = `${host}/${id}`;
        if (seen.has(key)) continue;
        seen.add(key);
        if (drainPending.has(key) && statusName(service.Status) !== "ALIVE") {
          drainPending.delete(key);
        }
        let record = rows.get(key);
        if (record && record.name !== name) {
          removeRecord(record, dirtyGroups);
          record = undefined;
        }
        if (!record) {
          record = createRecord(key, name, host, id);
          rows.set(key, record);
          added.push(record);
        }
        if (updateRecord(record, instanceView(service, host, id, key)) && record.group) {
          dirtyGroups.add(record.group);
        }
      }
    }
    for (const record of rows.values()) {
      if (!seen.has(record.key)) removeRecord(record, dirtyGroups);
    }
    placeRecords(added, dirtyGroups);
    for (const group of dirtyGroups) updateGroupMeta(group);
    updateHostOptions();
  }

  // ------------------------------------------------------------------ filters

  function readFiltersFromUrl() {
    const query = new URLSearchParams(window.location.search);
    filters.name = query.get("name") ?? "";
    filters.host = query.get("host") ?? "";
    const status = (query.get("status") ?? "").toUpperCase();
    filters.status = STATUS_NAMES.includes(status) ? status : "";
    dom.filterName.value = filters.name;
    dom.filterHost.value = filters.host;
    dom.filterStatus.value = filters.status;
  }

  function writeFiltersToUrl() {
    const query = new URLSearchParams(window.location.search);
    for (const [key, value] of Object.entries(filters)) {
      if (value) query.set(key, value);
      else query.delete(key);
    }
    const search = query.toString();
    const url = window.location.pathname + (search ? `?${search}` : "") + window.location.hash;
    window.history.replaceState(window.history.state, "", url);
  }

  function onFilterInput() {
    filters.name = dom.filterName.value;
    filters.host = dom.filterHost.value;
    filters.status = dom.filterStatus.value;
    writeFiltersToUrl();
    model.filtersDirty = true;
    scheduleRender();
  }

  /** Offer every host of the state as a suggestion in the host filter. */
  function updateHostOptions() {
    const hosts = new Set();
    for (const record of rows.values()) hosts.add(record.host);
    if (model.localHost) hosts.add(model.localHost);
    const sorted = Array.from(hosts).sort(compareText);
    const signature = sorted.join("\n");
    if (signature === model.hostsSignature) return;
    model.hostsSignature = signature;
    dom.hostOptions.replaceChildren(...sorted.map((host) => new Option(host, host)));
  }

  function matches(record, name, host) {
    if (filters.status && record.status !== filters.status) return false;
    if (host && !record.host.toLowerCase().includes(host)) return false;
    if (name && !record.name.toLowerCase().includes(name)) return false;
    return true;
  }

  /** Show the rows (and groups) that pass the filters; count them. */
  function applyFilters() {
    const name = filters.name.trim().toLowerCase();
    const host = filters.host.trim().toLowerCase();
    let shown = 0;
    for (const group of groupOrder) {
      let groupShown = 0;
      for (const record of group.records) {
        const visible = matches(record, name, host);
        if (visible !== record.visible) {
          record.visible = visible;
          record.row.hidden = !visible;
        }
        if (visible) groupShown++;
      }
      const groupVisible = groupShown > 0;
      if (groupVisible !== group.visible) {
        group.visible = groupVisible;
        group.body.hidden = !groupVisible;
      }
      shown += groupShown;
    }
    const total = rows.size;
    const text = `${shown} of ${total} instance${total === 1 ? "" : "s"}`;
    if (dom.shownCount.textContent !== text) dom.shownCount.textContent = text;
    const empty =
      total === 0
        ? model.stateRendered
          ? "No services in the cluster state."
          : "No services known yet."
        : shown === 0
          ? "No instance matches the filters."
          : "";
    dom.servicesEmpty.textContent = empty;
    dom.servicesEmpty.hidden = empty === "";
  }

  // ------------------------------------------------------------------ what only this host knows

  function renderLocal() {
    const local = isObject(model.local) ? model.local : {};
    model.haproxyIndex = new Map();
    const haproxy = isObject(local.haproxy) ? local.haproxy : null;
    const servers = haproxy && Array.isArray(haproxy.servers) ? haproxy.servers : [];
    for (const server of servers) {
      if (!isObject(server)) continue;
      const key = `${asText(server.hostname)}/${asText(server.id)}`;
      if (!model.haproxyIndex.has(key)) model.haproxyIndex.set(key, []);
      model.haproxyIndex.get(key).push(server);
    }
    for (const list of model.haproxyIndex.values()) {
      list.sort((a, b) => (Number(a.service_port) || 0) - (Number(b.service_port) || 0));
    }
    const error = haproxy && haproxy.error ? asText(haproxy.error) : "";
    dom.haproxyError.textContent = error ? `HAProxy's stats could not be read: ${error}` : "";
    dom.haproxyError.hidden = !error;
    renderMembers(local.members);
    renderRejections(local.rejections);
    renderPlan("plan" in local ? local.plan : undefined);
  }

  function renderHeader() {
    const local = isObject(model.local) ? model.local : {};
    const state = isObject(model.state) ? model.state : {};
    const host = model.localHost;
    const title = host ? `Sidecar — ${host}` : "Sidecar";
    if (document.title !== title) document.title = title;
    dom.pageTitle.textContent = title;
    const cluster = asText(local.cluster_name || state.ClusterName);
    const hosts = isObject(state.Servers) ? Object.keys(state.Servers).length : 0;
    const parts = [];
    if (cluster) parts.push(`Cluster ${cluster}`);
    if (model.stateRendered) {
      parts.push(`${hosts} host${hosts === 1 ? "" : "s"}`);
      parts.push(`${groups.size} service${groups.size === 1 ? "" : "s"}`);
      parts.push(`${rows.size} instance${rows.size === 1 ? "" : "s"}`);
    }
    dom.clusterSummary.textContent = parts.length ? parts.join(" · ") : "Waiting for the daemon…";
  }

  function renderMembers(members) {
    let list = Array.isArray(members) ? members.filter(isObject) : [];
    if (list.length === 0 && model.localHost) {
      list = [{ Name: model.localHost, State: "alive", Address: "", Incarnation: "", LastChange: null }];
    }
    const signature = JSON.stringify([list, model.localHost]);
    if (signature === model.membersSignature) return;
    model.membersSignature = signature;
    const sorted = list.slice().sort((a, b) => compareText(asText(a.Name), asText(b.Name)));
    forgetAges(dom.membersBody);
    dom.membersBody.replaceChildren(
      ...sorted.map((member) => {
        const name = asText(member.Name);
        const state = asText(member.State) || "unknown";
        const row = make("tr");
        row.dataset.member = name;
        const nameCell = make("th");
        nameCell.scope = "row";
        nameCell.dataset.label = "Name";
        nameCell.append(name);
        if (name === model.localHost) nameCell.append(" ", make("span", "this-host", "this host"));
        const stateCell = labelledCell("State");
        stateCell.append(badge(state, MEMBER_TONE[state] ?? "neutral"));
        const changed = labelledCell("Last change");
        const changeMs = parseTime(member.LastChange);
        changed.append(changeMs === null ? make("span", "muted", "—") : ageElement(changeMs));
        row.append(
          nameCell,
          stateCell,
          labelledCell("Address", asText(member.Address) || "—"),
          labelledCell("Incarnation", asText(member.Incarnation) || "—"),
          changed,
        );
        return row;
      }),
    );
    dom.navMembers.textContent = `(${sorted.length})`;
  }

  function labelledCell(label, text) {
    const cell = make("td", "", text);
    cell.dataset.label = label;
    return cell;
  }

  function renderRejections(rejections) {
    const list = Array.isArray(rejections) ? rejections.filter(isObject) : [];
    const signature = JSON.stringify(list);
    if (signature === model.rejectionsSignature) return;
    model.rejectionsSignature = signature;
    dom.rejectionsBody.replaceChildren(
      ...list.map((item) => {
        const row = make("tr");
        const id = asText(item.id);
        const name = asText(item.name) || (item.file ? `file ${asText(item.file)}` : "");
        row.append(
          labelledCell("Stage", asText(item.stage) || "—"),
          labelledCell("Host", asText(item.hostname) || "—"),
          labelledCell("ID", id || "—"),
          labelledCell("Name", name || "—"),
          labelledCell("Reason", asText(item.reason) || "—"),
        );
        row.lastChild.className = "reason";
        return row;
      }),
    );
    dom.rejectionsTable.hidden = list.length === 0;
    dom.rejectionsEmpty.hidden = list.length > 0;
    dom.navRejections.textContent = `(${list.length})`;
  }

  function describeAction(action) {
    if (!isObject(action)) return asText(action);
    const text = asText(action.describe || action.summary) || JSON.stringify(action);
    return action.reason ? `${text} — ${asText(action.reason)}` : text;
  }

  function renderPlan(plan) {
    const signature = JSON.stringify(plan === undefined ? "absent" : plan);
    if (signature === model.planSignature) return;
    model.planSignature = signature;
    if (plan === null) {
      dom.plan.hidden = false;
      dom.planDisabled.hidden = false;
      dom.planBody.hidden = true;
      dom.navPlanItem.hidden = true;
      return;
    }
    const pending = isObject(plan) && plan.pending === true;
    dom.plan.hidden = !pending;
    dom.navPlanItem.hidden = !pending;
    dom.planDisabled.hidden = true;
    dom.planBody.hidden = !pending;
    if (!pending) return;
    const actions = Array.isArray(plan.actions) ? plan.actions : [];
    let summary = `${actions.length} action${actions.length === 1 ? "" : "s"} pending on this host's HAProxy.`;
    if (plan.apply === false) summary += " Applying is off: sidecar only plans.";
    dom.planSummary.textContent = summary;
    const error = plan.error === undefined || plan.error === null ? "" : asText(plan.error);
    dom.planError.textContent = error ? `The last apply failed: ${error}` : "";
    dom.planError.hidden = !error;
    dom.planActions.replaceChildren(...actions.map((action) => make("li", "", describeAction(action))));
    const diff = asText(plan.diff);
    dom.planDiff.textContent = diff;
    dom.planDiffBlock.hidden = diff === "";
  }

  // ------------------------------------------------------------------ rendering

  function scheduleRender() {
    if (!model.frame) model.frame = window.requestAnimationFrame(render);
  }

  function render() {
    model.frame = 0;
    const stateChanged = model.stateDirty;
    const localChanged = model.localDirty;
    model.stateDirty = false;
    model.localDirty = false;
    if (stateChanged || localChanged) {
      const local = isObject(model.local) ? model.local : {};
      const state = isObject(model.state) ? model.state : {};
      model.localHost = asText(local.hostname || state.Hostname);
    }
    if (localChanged) {
      renderLocal();
      model.localRendered = true;
    }
    if (model.state && (stateChanged || localChanged || model.rowsDirty)) {
      renderInstances();
      model.stateRendered = true;
    }
    model.rowsDirty = false;
    model.filtersDirty = false;
    applyFilters();
    if (stateChanged || localChanged) renderHeader();
    if (stateChanged && isObject(model.state)) {
      window.sidecarRendered = { lastChanged: model.state.LastChanged, at: performance.now() };
    }
    if (model.stateRendered && model.localRendered && document.body.dataset.ready !== "1") {
      document.body.dataset.ready = "1";
    }
  }

  // ------------------------------------------------------------------ the event stream

  function setConnection(state) {
    if (connection.state === state) return;
    connection.state = state;
    const now = new Date();
    const time = make("time", "", now.toLocaleTimeString());
    time.dateTime = now.toISOString();
    dom.connection.dataset.state = state;
    if (state === "live") {
      dom.connection.replaceChildren("Live since ", time);
    } else {
      dom.connection.replaceChildren("Reconnecting… (connection lost at ", time, ")");
    }
  }

  function onEvent(kind, data) {
    let value;
    try {
      value = JSON.parse(data);
    } catch (error) {
      showMessage(`Could not read a "${kind}" event from the daemon: ${error.message}`, "error");
      return;
    }
    if (kind === "state") {
      model.state = isObject(value) ? value : {};
      model.stateDirty = true;
    } else {
      model.local = isObject(value) ? value : {};
      model.localDirty = true;
    }
    scheduleRender();
  }

  function connect() {
    const source = new EventSource(EVENTS_URL);
    connection.source = source;
    source.addEventListener("open", () => {
      connection.retryMs = RETRY_MIN_MS;
      setConnection("live");
    });
    source.addEventListener("error", () => {
      if (connection.state === "live") setConnection("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        // Refused outright (e.g. too many streams): EventSource gives up, so we retry.
        source.close();
        setConnection("reconnecting");
        window.setTimeout(connect, connection.retryMs);
        connection.retryMs = Math.min(RETRY_MAX_MS, connection.retryMs * 2);
      }
    });
    source.addEventListener("state", (event) => onEvent("state", event.data));
    source.addEventListener("local", (event) => onEvent("local", event.data));
  }

  // ------------------------------------------------------------------ drain

  function showMessage(text, kind) {
    dom.messages.textContent = text;
    dom.messages.dataset.kind = kind || "info";
    dom.messages.hidden = text === "";
  }

  function readToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function storeToken(token) {
    try {
      if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
      else window.sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // Storage refused (privacy mode): the token is asked again next time.
    }
  }

  /** Return the dialog's returnValue once it closes ("" when dismissed with Escape). */
  function runDialog(dialog) {
    return new Promise((resolve) => {
      dialog.returnValue = "";
      dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
      dialog.showModal();
    });
  }

  function confirmDrain(record) {
    return window.confirm(
      `Drain ${record.name} instance ${record.id} on ${record.host}?\n\n` +
        "HAProxy stops sending it new connections. There is no undrain.",
    );
  }

  /** Return the token typed, or null when the dialog was cancelled. */
  async function askToken() {
    dom.tokenInput.value = "";
    const answer = await runDialog(dom.tokenDialog);
    const token = dom.tokenInput.value.trim();
    dom.tokenInput.value = "";
    return answer === "ok" && token ? token : null;
  }

  /** POST the drain; return {ok, status, message}. */
  async function postDrain(id, token) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    let response;
    try {
      response = await fetch(`/api/services/${encodeURIComponent(id)}/drain`, {
        method: "POST",
        headers,
        cache: "no-store",
      });
    } catch (error) {
      return { ok: false, status: 0, message: `The drain request failed: ${error.message}` };
    }
    let message = "";
    try {
      const body = await response.json();
      if (isObject(body)) message = asText(body.message || body.Message);
    } catch {
      // Not JSON: the status line says it.
    }
    if (!message) message = `HTTP ${response.status} ${response.statusText}`.trim();
    return { ok: response.ok, status: response.status, message };
  }

  function setRowMessage(key, text) {
    if (text) rowMessages.set(key, text);
    else rowMessages.delete(key);
    model.rowsDirty = true;
    scheduleRender();
  }

  async function drain(key) {
    const record = rows.get(key);
    if (!record || drainPending.has(key)) return;
    if (!confirmDrain(record)) return;
    setRowMessage(key, "");
    drainPending.set(key, Date.now() + DRAIN_WAIT_MS);
    let token = readToken();
    let result = await postDrain(record.id, token);
    if (result.status === 403 && !token) {
      token = await askToken();
      if (token === null) {
        drainPending.delete(key);
        setRowMessage(key, "Not drained: the API token is needed.");
        showMessage(`${record.name} ${record.id} not drained: the API token is needed.`, "error");
        return;
      }
      storeToken(token);
      result = await postDrain(record.id, token);
    }
    if (result.ok) {
      showMessage(`${record.name} ${record.id}: ${result.message}`, "info");
      model.rowsDirty = true;
      scheduleRender();
      return;
    }
    if (result.status === 403) storeToken(""); // refused: ask for it again next time
    drainPending.delete(key);
    setRowMessage(key, result.message);
    showMessage(`${record.name} ${record.id} not drained: ${result.message}`, "error");
  }

  // ------------------------------------------------------------------ start

  function init() {
    for (const [name, id] of Object.entries({
      pageTitle: "page-title",
      clusterSummary: "cluster-summary",
      connection: "connection",
      messages: "messages",
      filters: "filters",
      filterName: "filter-name",
      filterHost: "filter-host",
      filterStatus: "filter-status",
      shownCount: "shown-count",
      services: "services",
      servicesEmpty: "services-empty",
      haproxyError: "haproxy-error",
      rejectionsTable: "rejections-table",
      rejectionsEmpty: "rejections-empty",
      navRejections: "nav-rejections",
      navMembers: "nav-members",
      navPlanItem: "nav-plan-item",
      plan: "plan",
      planDisabled: "plan-disabled",
      planBody: "plan-body",
      planSummary: "plan-summary",
      planError: "plan-error",
      planActions: "plan-actions",
      planDiff: "plan-diff",
      planDiffBlock: "plan-diff-block",
      hostOptions: "host-options",
      tokenDialog: "token-dialog",
      tokenInput: "token-input",
      tokenCancel: "token-cancel",
    })) {
      dom[name] = byId(id);
    }
    dom.membersBody = byId("members").tBodies[0];
    dom.rejectionsBody = dom.rejectionsTable.tBodies[0];
    rowTemplate = makeRowTemplate();
    dom.messages.hidden = true;

    readFiltersFromUrl();
    dom.filterName.addEventListener("input", onFilterInput);
    dom.filterHost.addEventListener("input", onFilterInput);
    dom.filterStatus.addEventListener("change", onFilterInput);
    dom.filters.addEventListener("submit", (event) => event.preventDefault());
    dom.filters.addEventListener("reset", (event) => {
      event.preventDefault();
      dom.filterName.value = "";
      dom.filterHost.value = "";
      dom.filterStatus.value = "";
      onFilterInput();
    });
    dom.tokenCancel.addEventListener("click", () => dom.tokenDialog.close("cancel"));
    dom.services.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action='drain']");
      if (button && !button.disabled) drain(button.dataset.key);
    });

    applyFilters();
    window.setInterval(tick, 1000);
    connect();
  }

  init();
})();
