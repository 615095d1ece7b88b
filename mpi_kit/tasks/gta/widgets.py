"""GTAPolicy's widget: the rule explorer (which version of every tool a user profile gets, and which rule says so).
Built-in ipywidgets only, as every kit widget (`mpi_kit/widgets.py`)."""
from __future__ import annotations


YES, NO, HOT, COLD = "#2a9d3f", "#c0392b", "#f39c12", "#b8b8b8"


def rule_explorer(policy=None, override: dict | None = None):
    """GTAPolicy rule explorer: pick a user profile (account type, credits, age, a math image or not) and see which
    version of every tool the rules give and which rule decides it, beside the version under an override."""
    import ipywidgets as w

    from .policy import ACCOUNT_TYPES, BASE_POLICY, DEFAULT_OVERRIDE, UserProfile

    base = policy or BASE_POLICY
    updated = base.with_override(override or DEFAULT_OVERRIDE)
    whole = {"description_width": "initial"}  # labels in full ("account type", not "account t...")
    acc = w.Dropdown(options=ACCOUNT_TYPES, value="B", description="account type", style=whole)
    credits = w.IntSlider(value=600, min=0, max=1000, description="credits", continuous_update=False, style=whole)
    age = w.IntSlider(value=30, min=13, max=90, description="age", continuous_update=False, style=whole)
    math = w.Checkbox(value=False, description="the image shows math")
    out = w.HTML()

    def refresh(_=None):
        p, ctx = UserProfile(acc.value, credits.value, age.value), {"math_image": math.value}
        rows = []
        for a, b in zip(base.versions(p, ctx), updated.versions(p, ctx)):
            changed = a["call"] != b["call"]  # shaded, and said in words: not told by colour alone
            hot = ' style="background:#fde9c8"' if changed else ""
            rows.append(f"<tr{hot}><td>{a['tool']}</td><td><b>{a['call']}</b></td><td>{a['rule']}</td>"
                        f"<td>{b['call']}{' <b>(changed)</b>' if changed else ''}</td></tr>")
        out.value = ("<table><tr><th>tool</th><th>call</th><th>decided by</th><th>under the override</th></tr>"
                     + "".join(rows) + "</table>")

    for x in (acc, credits, age, math):
        x.observe(refresh, names="value")
    refresh()
    return w.VBox([w.HBox([acc, math]), credits, age, out])
