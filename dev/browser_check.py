"""What a learner sees, in a real browser: run notebooks in JupyterLab under headless Chromium and screenshot every
chart and widget they show (not a test: a person reads the screenshots).

    python dev/browser_check.py 00_quickstart 06_policy_rollout [--out /tmp/shots] [--width 1280] [--port 8900]
                                [--tick "rescued by PoRo"]

It starts JupyterLab on a temporary copy of `notebooks/` (outputs and runs land there, never in the checkout; the
kit imported from this checkout, 1 kernel thread), opens each notebook,
runs Run > Run All Cells, waits for the kernel to idle, then scrolls to each cell whose output holds a plotly chart,
a widget, an error or stderr and screenshots it (`<out>/<nb>_cell<i>.png`), and writes each cell's output kinds and
any output wider than its box (`<out>/<nb>_cells.json`) and the run's seconds.

Getting a browser on a machine that reaches only package registries (2026-12-08): Playwright's own download is
blocked, npm's is not. Chromium for Linux ships inside an npm package, brotli-compressed:
    npm pack @sparticuz/chromium && tar xzf sparticuz-chromium-*.tgz
    node -e "const f=require('fs'),z=require('zlib');for(const n of ['chromium','al2023.tar','fonts.tar',
      'swiftshader.tar'])f.writeFileSync('package/bin/'+n,z.brotliDecompressSync(f.readFileSync('package/bin/'+n+'.br')))"
    mkdir -p chr && cp package/bin/chromium chr/ && chmod +x chr/chromium && for t in al2023 fonts swiftshader; do
      tar xf package/bin/$t.tar -C chr; done
    python -m venv pw && pw/bin/pip install playwright
then run this script with pw/bin/python and `--chromium chr/chromium` (JupyterLab and the kernel come from the kit's
.venv, `--python`). Launch it only with `ARGS` below and with
`LD_LIBRARY_PATH` set to its lib folders (other flags hang; setting FONTCONFIG_PATH to its own fonts.conf renders no
text).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mpi_kit.folders import scratch_folder  # noqa: E402  (stdlib only: runs under Playwright's Python too)
ARGS = ["--no-sandbox", "--disable-gpu", "--single-process", "--no-zygote", "--disable-dev-shm-usage",
        "--use-angle=swiftshader", "--in-process-gpu", "--headless=shell"]
STATE = """() => { const pn = jupyterapp.shell.currentWidget; const k = pn.sessionContext.session.kernel;
  let running = 0; for (const c of pn.content.widgets) if (c.model.type === 'code' &&
    (c.node.querySelector('.jp-InputPrompt')?.textContent || '').includes('*')) running++;
  return {status: k.status, running}; }"""
CELLS = """() => jupyterapp.shell.currentWidget.content.widgets.map((c, i) => {
  if (c.model.type !== 'code') return null; const kinds = [];
  for (let j = 0; j < c.model.outputs.length; j++) { const m = c.model.outputs.get(j).toJSON();
    kinds.push(m.output_type + (m.name ? ':' + m.name : '') + (m.data ? ':' + Object.keys(m.data).join(',') : '')); }
  const wide = []; c.node.querySelectorAll('.jp-OutputArea-output *').forEach(e => {
    if (e.scrollWidth > e.clientWidth + 2 && e.clientWidth > 0 && getComputedStyle(e).overflowX !== 'visible')
      wide.push(e.tagName + ' ' + e.scrollWidth + '>' + e.clientWidth); });
  return {i, kinds, wide: wide.slice(0, 5)}; }).filter(x => x)"""


def run_notebook(page, name: str, out: Path, base: str, tick=()) -> dict:
    page.goto(f"{base}/lab/tree/notebooks/{name}.ipynb?reset")
    try:
        page.wait_for_function("window.jupyterapp && jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel"
                               "?.status == 'idle'", timeout=120000)
    except Exception:
        page.screenshot(path=str(out / f"{name}_no_kernel.png"))
        raise
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    t0, idle = time.time(), 0
    while idle < 4 and time.time() - t0 < 900:  # idle with no cell running, four seconds in a row
        s = page.evaluate(STATE)
        idle = idle + 1 if s["status"] == "idle" and not s["running"] else 0
        time.sleep(1)
    seconds = round(time.time() - t0 - 4)
    cells = page.evaluate(CELLS)
    for label in tick:  # e.g. "rescued by PoRo": every checkbox of that label, ticked
        page.evaluate("""(label) => document.querySelectorAll('.widget-checkbox').forEach(b => {
            if (b.textContent.includes(label)) { const i = b.querySelector('input');
                                                 if (!i.checked) i.click(); } })""",
                      label)
        time.sleep(4)
    for c in cells:
        if any(k in kind for kind in c["kinds"] for k in ("plotly", "widget", "error", "stderr")):
            page.evaluate(f"async () => {{ const pn = jupyterapp.shell.currentWidget; pn.content.activeCellIndex = "
                          f"{c['i']}; await pn.content.scrollToItem({c['i']}, 'start'); }}")
            time.sleep(1)
            # the last chart or widget of the cell at the top of the screen (a cell prints tables before them)
            page.evaluate(f"""() => {{ const c = jupyterapp.shell.currentWidget.content.widgets[{c['i']}];
                const all = c.node.querySelectorAll(
                    '.js-plotly-plot, .jupyter-widgets.widget-vbox, [data-mime-type*=std]');
                if (all.length) all[all.length - 1].scrollIntoView({{block: 'start'}}); }}""")
            time.sleep(2)
            page.mouse.move(5, 790)  # the plotly toolbar hides when the mouse is away
            page.screenshot(path=str(out / f"{name}_cell{c['i']:02d}.png"))
    return {"notebook": name, "seconds": seconds, "cells": cells}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("notebooks", nargs="+", help="names without .ipynb, e.g. 06_policy_rollout")
    ap.add_argument("--out", default="/tmp/shots")
    ap.add_argument("--chromium", default="/tmp/chr/out/chromium")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--port", type=int, default=8900)
    ap.add_argument("--tick", nargs="*", default=[], help="after the run, tick every checkbox with this label "
                    "(e.g. 'rescued by PoRo') before the screenshots")
    venv = ROOT / ".venv" / "bin" / "python"
    ap.add_argument("--python", default=str(venv) if venv.exists() else sys.executable,
                    help="the Python whose JupyterLab and kernel run the notebooks (default: the kit's .venv)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chromium = Path(args.chromium).resolve()
    os.environ["LD_LIBRARY_PATH"] = f"{chromium.parent / 'lib'}:{chromium.parent}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with scratch_folder("browser-check-") as work:  # the copy this run makes, and the runs its notebooks write
        shutil.copytree(ROOT / "notebooks", work / "notebooks")
        lab = subprocess.Popen([args.python, "-m", "jupyter", "lab", "--no-browser", f"--port={args.port}",
                                "--allow-root", "--ServerApp.token=", "--ServerApp.password=",
                                "--ServerApp.disable_check_xsrf=True", "--LabApp.expose_app_in_browser=True",
                                f"--ServerApp.root_dir={work}"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"JupyterLab on {work} (a copy of notebooks/); screenshots in {out}", flush=True)
        base = f"http://localhost:{args.port}"
        try:
            for _ in range(60):
                try:
                    urllib.request.urlopen(f"{base}/api", timeout=2)
                    break
                except OSError:
                    time.sleep(1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(chromium), args=ARGS, timeout=60000)
                page = browser.new_page(viewport={"width": args.width, "height": 800})
                page.set_default_timeout(60000)
                for name in args.notebooks:
                    record = run_notebook(page, name, out, base, args.tick)
                    (out / f"{name}_cells.json").write_text(json.dumps(record, indent=1))
                    print(f"{name}: {record['seconds']} s; stderr in cells "
                          f"{[c['i'] for c in record['cells'] if any('stderr' in k for k in c['kinds'])]}", flush=True)
                    page.evaluate("jupyterapp.commands.execute('kernelmenu:shutdown')")
                browser.close()
        finally:
            lab.terminate()
            lab.wait(timeout=30)


if __name__ == "__main__":
    main()
