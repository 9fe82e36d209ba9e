// gridsync leadership dashboard: tree with today's numbers, alerts,
// freshness, trends; live over server-sent events. No external requests.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const lang = params.get("lang") === "en" ? "en" : "zh";
  const T = {
    zh: { title: "疫情防控网格化管理", tree: "今日各街道、社区数据", alerts: "发热与转诊提示", fresh: "数据新鲜度", trends: "趋势",
      login: "请输入查看口令", enter: "进入", bad: "口令无效", range: "天数", updated: "更新于", node: "单位", age: "最新数据",
      none: "暂无", stale: "滞后", lag: "未同步", offline: "离线", connected: "在线", other: "English",
      held: "暂停接收上报", blocked: "上级拒收", equiv: "双重签名证据",
      m: { entries: "登记进入", entries_turned_back: "劝返", entries_referred: "转诊(卡口)", entries_flagged: "来自湖北",
        temperatures: "测温", fevers: "发热", referrals: "转诊", visits: "入户走访", households_visited: "走访户数",
        deliveries: "配送", items_delivered: "配送物品", households_quarantined: "居家隔离户" } },
    en: { title: "Grid reporting", tree: "Today by street and community", alerts: "Fevers and referrals", fresh: "Data freshness", trends: "Trends",
      login: "Enter your viewer token", enter: "Open", bad: "Token not accepted", range: "days", updated: "updated", node: "unit", age: "newest data",
      none: "none", stale: "stale", lag: "unsynced", offline: "offline", connected: "online", other: "中文",
      held: "posts refused", blocked: "parent refuses", equiv: "equivocation evidence",
      m: { entries: "entries", entries_turned_back: "turned back", entries_referred: "referred at checkpoint", entries_flagged: "from Hubei",
        temperatures: "readings", fevers: "fevers", referrals: "referrals", visits: "visits", households_visited: "households visited",
        deliveries: "deliveries", items_delivered: "items delivered", households_quarantined: "quarantined households" } },
  }[lang];
  const CARDS = ["entries", "entries_turned_back", "entries_flagged", "temperatures", "fevers", "referrals", "visits", "households_visited", "deliveries", "items_delivered", "households_quarantined"];
  const COLS = ["entries", "fevers", "referrals", "visits", "deliveries", "households_quarantined"];
  const CHARTS = [["entries", "entries_turned_back"], ["temperatures", "fevers"], ["visits", "households_visited"], ["deliveries", "households_quarantined"]];
  const STALE_S = 600;
  const $ = (id) => document.getElementById(id);
  const fmt = (n) => (n === undefined || n === null ? "–" : String(n));
  let token = params.get("token") || sessionStorage.getItem("gridsync-token") || "";
  if (params.has("token")) {
    // Keep the token for this tab, and out of the address bar and history.
    sessionStorage.setItem("gridsync-token", token);
    params.delete("token");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params.toString() : ""));
  }
  let node = params.get("node") || "";
  let days = Number(params.get("days") || 14);
  let charts = [];
  let source = null;
  let pending = null;

  document.title = T.title;
  $("title").textContent = T.title;
  $("h-tree").textContent = T.tree; $("h-alerts").textContent = T.alerts; $("h-fresh").textContent = T.fresh; $("h-trends").textContent = T.trends;
  $("h-login").textContent = T.login; $("login-btn").textContent = T.enter; $("range-label").textContent = T.range;
  const other = new URLSearchParams(location.search); other.set("lang", lang === "en" ? "zh" : "en");
  $("lang-switch").href = "?" + other.toString(); $("lang-switch").textContent = T.other;
  $("range").value = String(days);
  $("range").onchange = () => { days = Number($("range").value); refresh(); };

  function api(path, q) {
    const u = new URLSearchParams(q || {}); if (node) u.set("node", node);
    return fetch(path + "?" + u.toString(), { headers: { Authorization: "Bearer " + token } }).then((r) => {
      if (r.status === 401 || r.status === 403) throw new Error("auth");
      if (!r.ok) throw new Error("http " + r.status);
      return r.json();
    });
  }

  function showLogin(err) {
    $("app").hidden = true; $("login").hidden = false; $("login-error").textContent = err ? T.bad : "";
  }
  $("login").onsubmit = (e) => {
    e.preventDefault(); token = $("token-input").value.trim(); sessionStorage.setItem("gridsync-token", token); start();
  };

  function cards(totals) {
    $("cards").innerHTML = "";
    for (const k of CARDS) {
      const d = document.createElement("div");
      d.className = "card" + ((k === "fevers" || k === "referrals") && totals[k] > 0 ? " alert" : "");
      d.innerHTML = `<div class="k"></div><div class="v" id="total-${k}" data-metric="${k}"></div>`;
      d.querySelector(".k").textContent = T.m[k]; d.querySelector(".v").textContent = fmt(totals[k]);
      $("cards").appendChild(d);
    }
  }

  function tree(agg, ages) {
    const t = $("tree"); const open = new Set([...t.querySelectorAll("tr.street.open")].map((r) => r.dataset.node));
    t.innerHTML = "";
    const head = t.insertRow(); head.innerHTML = `<th>${T.node}</th>` + COLS.map((c) => `<th>${T.m[c]}</th>`).join("") + `<th>${T.age}</th>`;
    const row = (n, cls, parent) => {
      const r = t.insertRow(); r.className = cls; r.dataset.node = n.node; if (parent) r.dataset.parent = parent;
      const today = n.days[n.days.length - 1].metrics;
      const cells = [n.name || n.node].concat(COLS.map((c) => fmt(today[c])));
      cells.forEach((v, i) => { const td = r.insertCell(); td.textContent = v; if (i > 0) { td.dataset.metric = COLS[i - 1]; if (COLS[i - 1] === "fevers" && today.fevers > 0) td.className = "fever"; } });
      const age = ages(n); const td = r.insertCell();
      td.textContent = age === null ? T.none : ago(age); td.className = age !== null && age > STALE_S ? "stale" : "fresh-ok";
      return r;
    };
    const kids = agg.children.length ? agg.children : [];
    for (const s of kids) {
      const r = row(s, "street" + (open.has(s.node) ? " open" : ""));
      r.onclick = () => { r.classList.toggle("open"); t.querySelectorAll(`tr[data-parent="${s.node}"]`).forEach((x) => x.classList.toggle("hidden")); };
      for (const c of s.children || []) row(c, "community" + (open.has(s.node) ? "" : " hidden"), s.node);
    }
  }

  function ago(s) {
    if (s < 60) return Math.round(s) + (lang === "en" ? " s" : "秒");
    if (s < 3600) return Math.round(s / 60) + (lang === "en" ? " min" : "分钟");
    return Math.round(s / 3600) + (lang === "en" ? " h" : "小时");
  }

  function alertsAndFreshness(todayTree, status) {
    const list = $("alerts"); list.innerHTML = "";
    const walk = (n, out) => { if (n.children && n.children.length) n.children.forEach((c) => walk(c, out)); else out.push(n); return out; };
    // Communities with fevers or referrals today, most fevers first.
    const hits = walk(todayTree, [])
      .map((c) => ({ c, m: c.days[c.days.length - 1].metrics }))
      .filter(({ m }) => m.fevers > 0 || m.referrals > 0)
      .sort((a, b) => b.m.fevers - a.m.fevers || b.m.referrals - a.m.referrals);
    for (const { c, m } of hits.slice(0, 40)) {
      const li = document.createElement("li"); li.dataset.node = c.node;
      if (m.fevers > 0) li.className = "stale";
      li.textContent = `${c.name}: ${T.m.fevers} ${m.fevers}, ${T.m.referrals} ${m.referrals}`; list.appendChild(li);
    }
    // This node's own troubles first: posts refused, origins its parent
    // refuses, equivocation evidence.
    const notices = [];
    const hold = status.posting && status.posting.hold;
    if (hold) notices.push(`${T.held} (${hold.code}): ${hold.message}`);
    for (const b of (status.parent_link && status.parent_link.blocked) || []) notices.push(`${T.blocked} ${b.origin} (${b.code}): ${b.message}`);
    for (const e of (status.equivocations || []).slice(0, 10)) notices.push(`${T.equiv}: ${e.origin} #${e.seq}`);
    notices.reverse().forEach((text) => {
      const li = document.createElement("li"); li.className = "stale notice"; li.textContent = text; list.prepend(li);
    });
    if (!hits.length && !notices.length) list.innerHTML = `<li>${T.none}</li>`;
    const f = $("fresh"); f.innerHTML = "";
    for (const ch of status.children_status || []) {
      const li = document.createElement("li"); li.dataset.node = ch.id;
      const name = (todayTree.children.find((x) => x.node === ch.id) || {}).name || ch.id;
      // Events in flight are normal; a link down, or events waiting for
      // longer than STALE_S, are not.
      const stale = !ch.connected || (ch.lag_seconds || 0) > STALE_S;
      li.className = stale ? "stale" : "fresh-ok";
      li.textContent = `${name}: ${ch.connected ? T.connected : T.offline}` + (ch.lag_events > 0 ? `, ${T.lag} ${ch.lag_events}` : "") +
        (ch.lag_seconds ? ` (${ago(ch.lag_seconds)})` : "");
      f.appendChild(li);
    }
  }

  function trends(agg) {
    const xs = agg.days.map((d) => Date.parse(d.date + "T00:00:00Z") / 1000);
    $("charts").innerHTML = ""; charts = [];
    for (const pair of CHARTS) {
      const div = document.createElement("div"); $("charts").appendChild(div);
      const data = [xs].concat(pair.map((m) => agg.days.map((d) => d.metrics[m])));
      const opts = { width: 420, height: 200, title: pair.map((m) => T.m[m]).join(" / "),
        series: [{}].concat(pair.map((m, i) => ({ label: T.m[m], stroke: i ? "#c62828" : "#1565c0", width: 2 }))),
        axes: [{}, {}], scales: { x: { time: true } } };
      charts.push(new uPlot(opts, data, div));
    }
  }

  function refresh() {
    // Days are the node's local days (its topology's time zone): let it pick today.
    Promise.all([
      api("/v1/aggregates", { days: String(days) }),
      api("/v1/aggregates", { depth: "2" }),
      api("/v1/status"),
    ]).then(([range, todayTree, status]) => {
      $("login").hidden = true; $("app").hidden = false;
      const cov = {}; range.coverage.forEach((c) => (cov[c.origin] = c.newest_event_age_s));
      const ages = (n) => {
        const origins = []; const walk = (x) => (x.children && x.children.length ? x.children.forEach(walk) : origins.push(x.node)); walk(n);
        const a = origins.map((o) => cov[o]).filter((v) => v !== null && v !== undefined);
        return a.length ? Math.min(...a) : null;
      };
      $("title").textContent = `${T.title} · ${range.name}`;
      cards(todayTree.totals); tree(todayTree, ages); alertsAndFreshness(todayTree, status); trends(range);
      $("updated").textContent = `${T.updated} ${new Date().toLocaleTimeString()}`;
      document.body.dataset.applied = String(Date.now());
    }).catch((e) => { if (e.message === "auth") showLogin(true); });
  }

  function live() {
    if (source) source.close();
    const u = new URLSearchParams({ token }); if (node) u.set("node", node);
    source = new EventSource("/v1/aggregates/stream?" + u.toString());
    source.addEventListener("aggregates", () => { clearTimeout(pending); pending = setTimeout(refresh, 300); });
    source.onopen = () => { $("live").className = "live on"; };
    source.onerror = () => { $("live").className = "live off"; };
  }

  function start() {
    if (!token) { showLogin(false); return; }
    refresh(); live();
  }
  start();
})();
