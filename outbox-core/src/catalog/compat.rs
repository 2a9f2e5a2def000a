//! Whether payloads a committed catalog describes still fit the current one.
//!
//! The reader is the current code, the data is what was written under the committed schema.
//! Within one event version that rules out a field retyped or narrowed (`i64` to `i32`, a
//! string to a UUID or an enum, a date-time to a date, any JSON to a string), newly required,
//! or an enum value dropped; a removed field is flagged too, since consumers of the published
//! events lose it. A new version is fine as long as stored payloads of the old one still reach
//! it: the old version stays, or upcasters lead from it to a version that is here.
//!
//! Not flagged: what only a strict consumer of the published events may reject — a new enum
//! variant, a wider integer, a field that became optional. An event that had a schema and has
//! none now cannot be compared, and is reported.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use serde_json::Value;

use super::Catalog;

/// A change that breaks readers of payloads written under the committed catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakingChange {
    /// A version is gone and no upcaster chain leads from it to a version that is here.
    VersionRemoved {
        /// The event type.
        event: String,
        /// The version that is gone.
        version: u32,
    },
    /// A field of the payload is gone.
    FieldRemoved {
        /// The event type.
        event: String,
        /// Its version.
        version: u32,
        /// The field's path (`lines[].sku`).
        field: String,
    },
    /// A field has a type that some committed values do not fit.
    FieldRetyped {
        /// The event type.
        event: String,
        /// Its version.
        version: u32,
        /// The field's path; empty for the payload itself.
        field: String,
        /// The committed type(s).
        was: String,
        /// The current type(s).
        now: String,
    },
    /// A field is required that was optional or absent.
    FieldRequired {
        /// The event type.
        event: String,
        /// Its version.
        version: u32,
        /// The field's path.
        field: String,
    },
    /// The committed catalog has the payload's schema and the current one has none (no
    /// `JsonSchema` derive, or the `schema` feature off): it cannot be checked.
    SchemaMissing {
        /// The event type.
        event: String,
        /// Its version.
        version: u32,
    },
    /// An enum value (a unit variant's name) is no longer accepted.
    ValueRemoved {
        /// The event type.
        event: String,
        /// Its version.
        version: u32,
        /// The field's path.
        field: String,
        /// The value, as JSON.
        value: String,
    },
}

impl fmt::Display for BreakingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint = "bump the version and add an upcaster from the committed one";
        match self {
            Self::VersionRemoved { event, version } => write!(
                f,
                "{event} v{version}: the version is gone and no upcaster leads from it to a \
                 version that is here; keep it (a renamed event type is a new type: keep the \
                 old one too), or add an upcaster from v{version}"
            ),
            Self::FieldRemoved {
                event,
                version,
                field,
            } => write!(f, "{event} v{version}: field `{field}` was removed; {hint}"),
            Self::SchemaMissing { event, version } => write!(
                f,
                "{event} v{version}: the committed catalog has its schema and this build has \
                 none (derive `schemars::JsonSchema` on it, with the `schema` feature on), so \
                 it cannot be checked"
            ),
            Self::FieldRetyped {
                event,
                version,
                field,
                was,
                now,
            } => {
                write!(
                    f,
                    "{event} v{version}: {} was {was} and is now {now}; {hint}",
                    what(field)
                )
            }
            Self::FieldRequired {
                event,
                version,
                field,
            } => write!(
                f,
                "{event} v{version}: {} is now required (committed payloads may lack it); \
                 give it a default, or {hint}",
                what(field)
            ),
            Self::ValueRemoved {
                event,
                version,
                field,
                value,
            } => write!(
                f,
                "{event} v{version}: {} no longer accepts {value}; {hint}",
                what(field)
            ),
        }
    }
}

/// A field's path as a message names it; the payload itself has an empty path.
fn what(field: &str) -> String {
    if field.is_empty() {
        "the payload".to_owned()
    } else {
        format!("field `{field}`")
    }
}

/// Every breaking change from `committed` to `current`, in catalog order.
pub(super) fn breaking_changes(committed: &Catalog, current: &Catalog) -> Vec<BreakingChange> {
    let mut out = Vec::new();
    for old in &committed.events {
        let Some(new) = current.find(&old.name, old.version) else {
            if !upcasts_to_current(current, &old.name, old.version) {
                out.push(BreakingChange::VersionRemoved {
                    event: old.name.clone(),
                    version: old.version,
                });
            }
            continue;
        };
        let (old_schema, new_schema) = match (&old.schema, &new.schema) {
            (Some(o), Some(n)) => (o, n),
            // A schema lost hides every change behind it.
            (Some(_), None) => {
                out.push(BreakingChange::SchemaMissing {
                    event: old.name.clone(),
                    version: old.version,
                });
                continue;
            }
            // Nothing was committed to compare with; `events_without_schema` names them.
            (None, _) => continue,
        };
        let mut cmp = Compare {
            event: &old.name,
            version: old.version,
            old_root: old_schema,
            new_root: new_schema,
            seen: HashSet::new(),
            out: &mut out,
        };
        cmp.node(old_schema, new_schema, "");
    }
    out
}

/// Whether upcasters lead from `version` of `event` to a version the current catalog has.
fn upcasts_to_current(current: &Catalog, event: &str, version: u32) -> bool {
    let mut v = version;
    while current
        .upcasters
        .iter()
        .any(|u| u.event_type == event && u.from_version == v)
    {
        v += 1;
        if current.find(event, v).is_some() {
            return true;
        }
    }
    false
}

struct Compare<'a> {
    event: &'a str,
    version: u32,
    old_root: &'a Value,
    new_root: &'a Value,
    /// Pairs of `$ref`s compared already: recursive types would loop.
    seen: HashSet<(String, String)>,
    out: &'a mut Vec<BreakingChange>,
}

impl<'a> Compare<'a> {
    fn node(&mut self, old: &'a Value, new: &'a Value, path: &str) {
        let refs = (ref_of(old), ref_of(new));
        if let (Some(o), Some(n)) = refs
            && !self.seen.insert((o.to_owned(), n.to_owned()))
        {
            return;
        }
        let old = non_null(resolve(self.old_root, old));
        let new = non_null(resolve(self.new_root, new));

        let (was, now) = (types(self.old_root, old), types(self.new_root, new));
        if was.is_empty() && !now.is_empty() && !is_object_like(old) {
            // Any JSON (`serde_json::Value`) became one type: most committed values no longer fit.
            self.retyped(path, "any JSON".to_owned(), join(&now));
            return;
        }
        // An unconstrained schema (`{}`, `true`) has no types: anything fits it.
        let lost: Vec<_> = if now.is_empty() {
            Vec::new()
        } else {
            was.iter().filter(|t| !fits(t, &now)).collect()
        };
        if lost == ["null"] {
            // `Option<T>` became `T`: the field is required now, whatever else changed.
            self.required(path);
        } else if !lost.is_empty() {
            self.out.push(BreakingChange::FieldRetyped {
                event: self.event.to_owned(),
                version: self.version,
                field: path.to_owned(),
                was: join(&was),
                now: join(&now),
            });
            return;
        }
        if let Some((was, now)) = narrowed(old, new) {
            self.retyped(path, was, now);
            return;
        }
        if let (Some(old_values), Some(new_values)) = (enum_values(old), enum_values(new)) {
            for v in old_values.iter().filter(|v| !new_values.contains(v)) {
                self.out.push(BreakingChange::ValueRemoved {
                    event: self.event.to_owned(),
                    version: self.version,
                    field: path.to_owned(),
                    value: v.to_string(),
                });
            }
        }
        if branches(old).is_some() || branches(new).is_some() {
            // An enum, on either side: an enum of one variant is that variant's schema alone.
            self.variants(old, new, path);
            return;
        }
        self.object(old, new, path);
        if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
            self.node(o, n, &format!("{path}[]"));
        }
        // A map's values (`HashMap<String, V>`).
        if let (Some(o @ Value::Object(_)), Some(n @ Value::Object(_))) = (
            old.get("additionalProperties"),
            new.get("additionalProperties"),
        ) {
            self.node(o, n, &format!("{path}{{}}"));
        }
    }

    fn retyped(&mut self, path: &str, was: String, now: String) {
        self.out.push(BreakingChange::FieldRetyped {
            event: self.event.to_owned(),
            version: self.version,
            field: path.to_owned(),
            was,
            now,
        });
    }

    fn object(&mut self, old: &'a Value, new: &'a Value, path: &str) {
        let old_props = old.get("properties").and_then(Value::as_object);
        let new_props = new.get("properties").and_then(Value::as_object);
        let field = |name: &str| {
            if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        };
        for (name, old_prop) in old_props.into_iter().flatten() {
            match new_props.and_then(|p| p.get(name)) {
                Some(new_prop) => self.node(old_prop, new_prop, &field(name)),
                None => self.out.push(BreakingChange::FieldRemoved {
                    event: self.event.to_owned(),
                    version: self.version,
                    field: field(name),
                }),
            }
        }
        let old_required = required(old);
        for name in required(new).difference(&old_required) {
            self.required(&field(name));
        }
    }

    /// The variants of an enum (`oneOf` branches): each committed one must still be there,
    /// and is compared with its namesake.
    fn variants(&mut self, old: &'a Value, new: &'a Value, path: &str) {
        let as_branches = |s: &'a Value| match branches(s) {
            Some(b) => b.iter().collect::<Vec<_>>(),
            None => vec![s],
        };
        let (old_branches, new_branches) = (as_branches(old), as_branches(new));
        for o in old_branches {
            let o_resolved = resolve(self.old_root, o);
            let Some(name) = variant_name(o_resolved) else {
                continue;
            };
            let found = new_branches
                .iter()
                .find(|n| variant_name(resolve(self.new_root, n)).as_ref() == Some(&name))
                .copied();
            match found {
                Some(n) => self.node(o, n, path),
                None => self.out.push(BreakingChange::ValueRemoved {
                    event: self.event.to_owned(),
                    version: self.version,
                    field: path.to_owned(),
                    value: name,
                }),
            }
        }
    }

    /// Reports `path` as newly required, once (a field can lose `null` and gain `required`).
    fn required(&mut self, path: &str) {
        let change = BreakingChange::FieldRequired {
            event: self.event.to_owned(),
            version: self.version,
            field: path.to_owned(),
        };
        if !self.out.contains(&change) {
            self.out.push(change);
        }
    }
}

/// A schema with properties or a map's values but no `type`: an object all the same.
fn is_object_like(schema: &Value) -> bool {
    schema.get("properties").is_some() || schema.get("additionalProperties").is_some()
}

/// Whether `new` admits fewer values of the same JSON type than `old`: a smaller integer
/// range (`int64` to `int32`, `uint32` to `int32`), a string format added or changed (a UUID,
/// a date where a date-time was), or an enum where any string was. Returns how to name both.
fn narrowed(old: &Value, new: &Value) -> Option<(String, String)> {
    let describe = |s: &Value| {
        let ty = s.get("type").and_then(Value::as_str).unwrap_or("value");
        match s.get("format").and_then(Value::as_str) {
            Some(f) => format!("{ty} ({f})"),
            None => ty.to_owned(),
        }
    };
    if let (Some(o), Some(n)) = (int_range(old), int_range(new))
        && (n.0 > o.0 || n.1 < o.1)
    {
        return Some((describe(old), describe(new)));
    }
    let is_string = |s: &Value| s.get("type").and_then(Value::as_str) == Some("string");
    if is_string(old) && is_string(new) {
        let (of, nf) = (old.get("format"), new.get("format"));
        if nf.is_some() && of != nf {
            return Some((describe(old), describe(new)));
        }
    }
    if enum_values(old).is_none()
        && is_string(old)
        && let Some(values) = enum_values(new)
    {
        let listed: Vec<String> = values.iter().map(Value::to_string).collect();
        return Some((describe(old), format!("one of {}", listed.join(", "))));
    }
    None
}

/// The range of integers a schema admits, from its format and bounds (`None` if not an
/// integer).
fn int_range(s: &Value) -> Option<(i128, i128)> {
    if s.get("type").and_then(Value::as_str) != Some("integer") {
        return None;
    }
    let (mut lo, mut hi) = match s.get("format").and_then(Value::as_str) {
        Some("int8") => (i8::MIN.into(), i8::MAX.into()),
        Some("int16") => (i16::MIN.into(), i16::MAX.into()),
        Some("int32") => (i32::MIN.into(), i32::MAX.into()),
        Some("int64") => (i64::MIN.into(), i64::MAX.into()),
        Some("uint8") => (0, u8::MAX.into()),
        Some("uint16") => (0, u16::MAX.into()),
        Some("uint32") => (0, u32::MAX.into()),
        Some("uint64" | "uint") => (0, u64::MAX.into()),
        _ => (i128::MIN, i128::MAX),
    };
    if let Some(m) = s.get("minimum").and_then(Value::as_f64) {
        lo = lo.max(m.ceil() as i128);
    }
    if let Some(m) = s.get("maximum").and_then(Value::as_f64) {
        hi = hi.min(m.floor() as i128);
    }
    Some((lo, hi))
}

fn ref_of(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str)
}

/// Follows a local `$ref` (`#/definitions/Line`, `#/$defs/Line`) within `root`.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut schema = schema;
    // A chain of refs is short; the bound only stops a cycle of bare refs.
    for _ in 0..16 {
        match ref_of(schema)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| root.pointer(pointer))
        {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

/// An `Option<T>` whose `T` is a `$ref` is `anyOf: [T, null]` in draft 7: compare `T`.
fn non_null(schema: &Value) -> &Value {
    let branches = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array);
    if let Some(branches) = branches {
        let not_null: Vec<_> = branches
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [only] = not_null.as_slice() {
            return only;
        }
    }
    schema
}

/// The JSON types a schema admits (`null` included for an option); empty for "anything".
fn types(root: &Value, schema: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match schema.get("type") {
        Some(Value::String(t)) => {
            out.insert(t.clone());
        }
        Some(Value::Array(ts)) => out.extend(ts.iter().filter_map(Value::as_str).map(String::from)),
        _ => {}
    }
    if let Some(values) = enum_values(schema) {
        out.extend(values.iter().map(|v| json_type(v).to_owned()));
    }
    for key in ["anyOf", "oneOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(types(root, resolve(root, branch)));
        }
    }
    if out.is_empty() && schema.get("properties").is_some() {
        out.insert("object".into());
    }
    out
}

/// Whether a committed value of JSON type `was` fits one of the current types.
fn fits(was: &str, now: &BTreeSet<String>) -> bool {
    now.contains(was) || (was == "integer" && now.contains("number"))
}

fn branches(schema: &Value) -> Option<&Vec<Value>> {
    schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
}

/// What tells an enum variant apart in its schema, as JSON text: its `const` (a unit variant),
/// its one key (externally tagged, `{"Shipped": {..}}`), or its tag property's `const`
/// (`#[serde(tag = "type")]`). `None` for a branch that is not a variant (`null`).
fn variant_name(branch: &Value) -> Option<String> {
    if let Some(values) = enum_values(branch)
        && let [only] = values.as_slice()
    {
        return Some(only.to_string());
    }
    let props = branch.get("properties")?.as_object()?;
    if let Some((tag, value)) = props.iter().find_map(|(k, v)| {
        let values = enum_values(v)?;
        match values.as_slice() {
            [only] => Some((k, only.clone())),
            _ => None,
        }
    }) {
        return Some(format!("{tag}={value}"));
    }
    match required(branch).into_iter().collect::<Vec<_>>().as_slice() {
        [only] if props.len() == 1 => Some(format!("{only:?}")),
        _ => None,
    }
}

fn enum_values(schema: &Value) -> Option<Vec<Value>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.clone());
    }
    schema.get("const").map(|v| vec![v.clone()])
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn required(schema: &Value) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

fn join(types: &BTreeSet<String>) -> String {
    types.iter().cloned().collect::<Vec<_>>().join(" or ")
}
