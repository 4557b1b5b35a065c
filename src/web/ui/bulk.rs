//! The machines page's bulk change: the form under the table, the preview page
//! (`POST /ui/machines/bulk/preview`, which changes nothing) and its Apply button
//! (`POST /ui/machines/bulk/apply`). The form is turned into the JSON body of
//! `POST /machines/bulk` and goes through the same parser and the same `bulk::run`, so the page
//! can do nothing the API would refuse. Works without JavaScript: rows are ticked with plain
//! checkboxes bound to the form by its id.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};

use crate::web::app::internal;
use crate::web::bulk::{self, Filter, Plan, Refused, View};
use crate::web::db::CatalogEntry;
use crate::web::http::Resp;
use crate::web::ui::template::{Escape, Html, Val, render};
use crate::web::ui::{Ctx, field, page, redirect_with, short};
use crate::web::validate;
use crate::wire::BootMode;

const PREVIEW: &str = include_str!("../../../html/bulk.html");

/// The form fields a preview hands on to its Apply button, besides the MACs.
const SET_FIELDS: [&str; 6] =
    ["image", "boot_mode", "labels_add", "labels_remove", "disk", "disk_model"];

/// The bulk form under the machines table; `filter` is the page's current filter, which
/// "all matching the filter" takes over, and `shown` how many machines it matches.
pub fn form(
    ctx: &Ctx<'_>,
    catalog: &[CatalogEntry],
    labels: &BTreeSet<&str>,
    filter: &Filter,
    shown: usize,
) -> Html {
    let mut h = Html::with_capacity(4096);
    h.push(format_args!(
        "<form id=\"bulk\" class=\"card bulk\" method=\"post\" action=\"/ui/machines/bulk/preview\">\
         <h2>Change several machines</h2>\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"filter_q\" value=\"{}\">\
         <input type=\"hidden\" name=\"filter_label\" value=\"{}\">\
         <input type=\"hidden\" name=\"filter_status\" value=\"{}\">\n\
         <fieldset><legend>Which machines</legend>\
         <input type=\"radio\" id=\"bulk-ticked\" name=\"select\" value=\"macs\" checked> \
         <label for=\"bulk-ticked\">the ticked rows</label><br>\
         <input type=\"radio\" id=\"bulk-filter\" name=\"select\" value=\"filter\"> \
         <label for=\"bulk-filter\">all {shown} matching the filter above</label><br>\
         <input type=\"radio\" id=\"bulk-by-label\" name=\"select\" value=\"label\"> \
         <label for=\"bulk-by-label\">every machine with the label</label> \
         <select id=\"bulk-label\" name=\"select_label\" aria-label=\"label to select by\">",
        Escape(&ctx.csrf),
        Escape(&filter.q),
        Escape(&filter.label),
        Escape(&filter.status),
    ));
    for l in labels {
        h.push(format_args!("<option>{}</option>", Escape(l)));
    }
    h.push(format_args!(
        "</select></fieldset>\n<div class=\"bulk-fields\">\
         <label for=\"bulk-image\">Image</label><select id=\"bulk-image\" name=\"image\">\
         <option value=\"\">keep as it is</option><option value=\"none\">none (not assigned)</option>"
    ));
    for e in catalog {
        h.push(format_args!(
            "<option value=\"{}\">{} ({})</option>",
            Escape(&e.bty_image_ref),
            Escape(&e.name),
            Escape(short(&e.bty_image_ref))
        ));
    }
    h.push(format_args!(
        "</select>\n<label for=\"bulk-mode\">Boot mode</label><select id=\"bulk-mode\" \
         name=\"boot_mode\"><option value=\"\">keep as it is</option>"
    ));
    for m in BootMode::ALL.map(BootMode::as_str) {
        h.push(format_args!("<option value=\"{m}\">{m}</option>"));
    }
    h.push(format_args!(
        "</select>\n<label for=\"bulk-add\">Add labels <span class=\"hint\">(comma separated)</span></label>\
         <input id=\"bulk-add\" name=\"labels_add\">\n\
         <label for=\"bulk-remove\">Remove labels</label><input id=\"bulk-remove\" name=\"labels_remove\">\n\
         <label for=\"bulk-disk\">Target disk <span class=\"hint\">(resolved per machine from its inventory)</span></label>\
         <select id=\"bulk-disk\" name=\"disk\"><option value=\"\">keep as it is</option>\
         <option value=\"only-fixed\">the only fixed disk</option>\
         <option value=\"smallest\">the smallest fixed disk</option>\
         <option value=\"largest\">the largest fixed disk</option>\
         <option value=\"model\">the disk of the model below</option>\
         <option value=\"none\">none</option></select>\n\
         <label for=\"bulk-model\">Disk model</label><input id=\"bulk-model\" name=\"disk_model\">\n\
         </div><button type=\"submit\" id=\"bulk-preview-button\">Preview</button></form>\n"
    ));
    h
}

/// A comma-separated label list as JSON strings.
fn list(fields: &[(String, String)], name: &str) -> Value {
    Value::Array(
        field(fields, name)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| Value::String(l.to_string()))
            .collect(),
    )
}

/// The form as the API's JSON body, checked by the API's parser.
fn request(fields: &[(String, String)], dry_run: bool) -> Result<bulk::Request, validate::Invalid> {
    let get = |k: &str| field(fields, k).map(str::trim).unwrap_or("");
    let select = match get("select") {
        "label" => json!({ "label": get("select_label") }),
        "filter" => json!({ "filter": {
            "q": get("filter_q"), "label": get("filter_label"), "status": get("filter_status"),
        }}),
        _ => {
            let macs: Vec<&str> =
                fields.iter().filter(|(k, _)| k == "mac").map(|(_, v)| v.as_str()).collect();
            if macs.is_empty() {
                return Err(validate::Invalid::new(
                    "select",
                    "tick at least one machine, or choose the filter or a label",
                ));
            }
            json!({ "macs": macs })
        }
    };
    let mut set = serde_json::Map::new();
    match get("image") {
        "" => {}
        "none" => drop(set.insert("bty_image_ref".into(), Value::Null)),
        r => drop(set.insert("bty_image_ref".into(), r.into())),
    }
    if !get("boot_mode").is_empty() {
        set.insert("boot_mode".into(), get("boot_mode").into());
    }
    let (add, remove) = (list(fields, "labels_add"), list(fields, "labels_remove"));
    if add.as_array().is_some_and(|a| !a.is_empty())
        || remove.as_array().is_some_and(|a| !a.is_empty())
    {
        set.insert("labels".into(), json!({ "add": add, "remove": remove }));
    }
    match get("disk") {
        "" => {}
        "none" => drop(set.insert("target_disk".into(), Value::Null)),
        "model" => drop(
            set.insert("target_disk".into(), json!({ "rule": { "model": get("disk_model") } })),
        ),
        rule => drop(set.insert("target_disk".into(), json!({ "rule": rule }))),
    }
    let mut body = json!({ "select": select, "set": set, "dry_run": dry_run });
    if !get("expect").is_empty() {
        body["expect"] = get("expect").into();
    }
    validate::bulk_request(body.to_string().as_bytes())
}

/// `POST /ui/machines/bulk/preview`: what would change, nothing written.
pub fn preview(ctx: &Ctx<'_>, fields: &[(String, String)]) -> Resp {
    let req = match request(fields, true) {
        Ok(r) => r,
        Err(e) => return redirect_with("/ui/machines", true, &format!("Nothing changed: {e}")),
    };
    match bulk::plan(ctx.app, &req) {
        Ok(plan) => preview_page(ctx, fields, &plan, None),
        Err(Refused::Internal(e)) => internal(e),
        Err(r) => redirect_with("/ui/machines", true, &format!("Nothing changed: {}", r.message())),
    }
}

/// `POST /ui/machines/bulk/apply`: the previewed change, if the machines still match it.
pub fn apply(ctx: &Ctx<'_>, fields: &[(String, String)]) -> Resp {
    let req = match request(fields, false) {
        Ok(r) => r,
        Err(e) => return redirect_with("/ui/machines", true, &format!("Nothing changed: {e}")),
    };
    match bulk::run(ctx.app, &req) {
        Ok((plan, _)) => {
            let mut msg = format!("Changed {} machine(s).", plan.changed());
            if !plan.unresolved.is_empty() {
                let left: Vec<String> =
                    plan.unresolved.iter().map(|u| format!("{} ({})", u.mac, u.reason)).collect();
                msg.push_str(&format!(" Left as they were: {}", left.join("; ")));
            }
            redirect_with("/ui/machines", false, &msg)
        }
        Err(Refused::Conflict(why)) => {
            // Show what applying would do now, so the operator confirms the new plan.
            let again = bulk::Request { expect: None, dry_run: true, ..req };
            match bulk::plan(ctx.app, &again) {
                Ok(plan) => preview_page(ctx, fields, &plan, Some(&why)),
                Err(r) => redirect_with(
                    "/ui/machines",
                    true,
                    &format!("Nothing changed: {}", r.message()),
                ),
            }
        }
        Err(Refused::Internal(e)) => internal(e),
        Err(r) => redirect_with("/ui/machines", true, &format!("Nothing changed: {}", r.message())),
    }
}

/// `before → after`, or the one value when it stays.
fn change(out: &mut Html, before: &str, after: &str) {
    if before == after {
        out.push(format_args!("<td>{}</td>", Escape(before)));
    } else {
        out.push(format_args!(
            "<td><del>{}</del> → <ins>{}</ins></td>",
            Escape(before),
            Escape(after)
        ));
    }
}

fn preview_page(
    ctx: &Ctx<'_>,
    fields: &[(String, String)],
    plan: &Plan,
    notice: Option<&str>,
) -> Resp {
    let catalog = match ctx.app.db.catalog() {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let names: HashMap<&str, &str> =
        catalog.iter().map(|e| (e.bty_image_ref.as_str(), e.name.as_str())).collect();
    let image = |v: &View| match v.bty_image_ref.as_deref() {
        Some(r) => names.get(r).map(|n| n.to_string()).unwrap_or_else(|| short(r).to_string()),
        None => "-".into(),
    };
    let mut rows = Html::with_capacity(plan.machines.len() * 300);
    for i in &plan.machines {
        rows.push(format_args!(
            "<tr id=\"p-{}\"><td class=\"mono\">{}</td>",
            i.mac.replace(':', ""),
            Escape(&i.mac)
        ));
        change(&mut rows, &image(&i.before), &image(&i.after));
        change(&mut rows, i.before.boot_mode.as_str(), i.after.boot_mode.as_str());
        change(&mut rows, &i.before.labels.join(", "), &i.after.labels.join(", "));
        let serial = |v: &View| v.target_disk_serial.clone().unwrap_or_else(|| "-".into());
        change(&mut rows, &serial(&i.before), &serial(&i.after));
        if let Some(p) = &i.target_disk {
            // The rule's pick, so the operator sees which disk the serial is before saving.
            rows.push(format_args!(
                "<td class=\"hint\">{} {} {}</td>",
                Escape(&p.path),
                Escape(p.size.as_deref().unwrap_or("")),
                Escape(p.model.as_deref().unwrap_or(""))
            ));
        } else {
            rows.push(format_args!("<td></td>"));
        }
        rows.push(format_args!(
            "<td>{}</td></tr>\n",
            if i.changed { "<span class=\"badge ok\">changes</span>" } else { "no change" }
        ));
    }
    let mut unresolved = Html::new();
    if !plan.unresolved.is_empty() {
        unresolved.push(format_args!(
            "<section class=\"card\"><h2>Left as they are: the disk rule does not resolve</h2>\
             <ul id=\"bulk-unresolved\">"
        ));
        for u in &plan.unresolved {
            unresolved.push(format_args!(
                "<li><span class=\"mono\">{}</span>: {}</li>",
                Escape(&u.mac),
                Escape(&u.reason)
            ));
        }
        unresolved.push(format_args!("</ul></section>"));
    }
    let n = plan.changed();
    let mut apply = Html::new();
    if n > 0 {
        apply.push(format_args!(
            "<form method=\"post\" action=\"/ui/machines/bulk/apply\" id=\"bulk-apply\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"select\" value=\"macs\">\
             <input type=\"hidden\" name=\"expect\" value=\"{}\">",
            Escape(&ctx.csrf),
            Escape(&plan.fingerprint)
        ));
        // The machines previewed, not the selection again: a machine that gained the label
        // since is not swept in unseen.
        let macs =
            plan.machines.iter().map(|i| &i.mac).chain(plan.unresolved.iter().map(|u| &u.mac));
        for mac in macs {
            apply.push(format_args!(
                "<input type=\"hidden\" name=\"mac\" value=\"{}\">",
                Escape(mac)
            ));
        }
        for k in SET_FIELDS {
            if let Some(v) = field(fields, k) {
                apply.push(format_args!(
                    "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                    Escape(v)
                ));
            }
        }
        apply.push(format_args!("<button type=\"submit\">Apply to {n} machine(s)</button></form>"));
    }
    let summary = format!(
        "{} machine(s) selected: {n} would change, {} would stay as they are, {} left out (disk rule).",
        plan.machines.len() + plan.unresolved.len(),
        plan.machines.len() - n,
        plan.unresolved.len()
    );
    let mut note = Html::new();
    if let Some(why) = notice {
        note.push(format_args!(
            "<p class=\"flash error\" role=\"alert\">Not applied: {}</p>",
            Escape(why)
        ));
    }
    let body = render(
        PREVIEW,
        &[
            ("notice", Val::Html(&note)),
            ("summary", Val::Text(&summary)),
            ("rows", Val::Html(&rows)),
            ("unresolved", Val::Html(&unresolved)),
            ("apply", Val::Html(&apply)),
        ],
    );
    page(
        ctx,
        "machines",
        "Preview of a bulk change",
        if notice.is_some() { 409 } else { 200 },
        &body,
    )
}
