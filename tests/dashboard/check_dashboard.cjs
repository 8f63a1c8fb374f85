// Drives the dashboard in Debian's chromium with playwright-core (which `./dev` installs under
// .tools/): the page lists the deployments, shows a new one without a reload, shows a replica
// going UNHEALTHY, follows a replica's log, logs no console error and asks nothing of any host
// but the controller.
//
//   node check_dashboard.cjs API_URL PROXY_URL SCREENSHOT
//
// PLAYWRIGHT_CORE names the playwright-core package directory. Exits 0 when every check passed;
// prints what it measured on stdout and what failed on stderr.
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const [apiUrl, proxyUrl, screenshot] = process.argv.slice(2);

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const problems = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    page.on("console", (message) => {
      if (message.type() === "error") problems.push("console error: " + message.text());
    });
    page.on("pageerror", (error) => problems.push("page error: " + error.message));
    page.on("response", (response) => {
      if (response.status() >= 400) problems.push(response.status() + " for " + response.url());
    });
    page.on("request", (request) => {
      const host = new URL(request.url()).hostname;
      if (host !== "127.0.0.1" && host !== "localhost") {
        problems.push("a request left localhost: " + request.url());
      }
    });

    await page.goto(apiUrl + "/");
    await page.waitForSelector('#deployments tr[data-key="flaky"]', { timeout: 10000 });
    await page.waitForSelector('#connection.live', { timeout: 10000 });

    // A new deployment appears without a reload.
    const config = await (await fetch(apiUrl + "/api/serve/deployments/")).json();
    config.deployments.push({ name: "added", runtime: "builtin:hello" });
    const put = await fetch(apiUrl + "/api/serve/deployments/", {
      method: "PUT",
      body: JSON.stringify(config),
    });
    if (!put.ok) throw new Error("PUT answered " + put.status + ": " + (await put.text()));
    const putAt = Date.now();
    await page.waitForSelector('#deployments tr[data-key="added"]', { timeout: 2000 });
    console.log("a new deployment was shown " + (Date.now() - putAt) + " ms after the PUT");

    // A replica whose health checks fail is shown going UNHEALTHY.
    const told = await fetch(proxyUrl + "/flaky/health/fail");
    if (!told.ok) throw new Error("/flaky/health/fail answered " + told.status);
    const toldAt = Date.now();
    await page.waitForSelector('#events li .pill.UNHEALTHY', { timeout: 30000 });
    console.log("a replica going UNHEALTHY was shown " + (Date.now() - toldAt) +
                " ms after its checks began to fail");
    await page.waitForSelector('#deployments tr[data-key="added"] .pill.HEALTHY', { timeout: 30000 });

    // Traffic shows in the deployment's charts (figures travel worker -> node agent heartbeat
    // -> controller, each about once a second).
    for (const until = Date.now() + 4000; Date.now() < until;) await fetch(proxyUrl + "/added");
    await page.waitForFunction(() => {
      const figure = document.querySelector('#deployments tr[data-key="added"] td.rps .figure');
      return figure !== null && figure.textContent !== "0/s";
    }, null, { timeout: 15000 });
    console.log("traffic shown: " +
                (await page.textContent('#deployments tr[data-key="added"] td.rps .figure')));
    // A replica's log, followed: its last lines (the traffic's), then a request made after it
    // was opened.
    const replicaId = await page.evaluate(() => {
      for (const row of document.querySelectorAll("#replicas tbody tr")) {
        if (row.children[1].textContent === "added") return row.dataset.key;
      }
      return null;
    });
    if (replicaId === null) throw new Error("no replica of 'added' is listed");
    await page.click('#replicas tr[data-key="' + replicaId + '"] td.id button');
    await page.waitForFunction(
        (id) => document.getElementById("log").textContent.includes("replica=" + id),
        replicaId, { timeout: 10000 });
    const logAt = Date.now();
    await fetch(proxyUrl + "/added/after-the-log-was-opened");
    await page.waitForFunction(
        () => document.getElementById("log").textContent.includes("/added/after-the-log-was-opened"),
        null, { timeout: 10000 });
    console.log("a request's line was shown in the replica's log " + (Date.now() - logAt) +
                " ms after it was made");
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log("screenshot: " + screenshot);
  } finally {
    await browser.close();
  }
  if (problems.length > 0) throw new Error(problems.join("\n"));
}

main().catch((error) => {
  console.error(String(error && error.stack ? error.stack : error));
  process.exit(1);
});
