//! Step-instance paths: the one place they are built and taken apart.
//!
//! A run's threads of control and its step instances are named by paths:
//!
//! - a top-level step is its id: `review`;
//! - a parallel branch is a thread (scope) `<parallel>.<branch>` (`p.left`);
//!   the steps in it keep their own ids;
//! - a map iteration is `<map>[<i>]`, and the steps it runs are recorded as
//!   `<map>[<i>].<step>` (iterations nest: `m[2].n[0].price`).
//!
//! The *prefix* of an instance is everything up to and including its last
//! `.` (`m[2].price` → `m[2].`), which names the iteration whose outputs it
//! sees; the *step* is what follows (`price`), the id in the definition.
//! Step ids never contain `.`, `[` or `]` (the compiler refuses them), so
//! these splits are unambiguous.

/// A step-instance or thread path, borrowed (`m[2].price`, `p.left`, `m[2]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstancePath<'a>(&'a str);

impl<'a> InstancePath<'a> {
    /// The path `s`.
    pub fn new(s: &'a str) -> Self {
        InstancePath(s)
    }

    /// The path as text, as it is recorded.
    pub fn as_str(self) -> &'a str {
        self.0
    }

    /// The step id in the definition (`m[2].price` → `price`).
    pub fn step(self) -> &'a str {
        self.0.rsplit_once('.').map_or(self.0, |(_, b)| b)
    }

    /// The iteration prefix (`m[2].price` → `m[2].`; `""` at the top).
    pub fn prefix(self) -> &'a str {
        self.0.rsplit_once('.').map_or("", |(p, _)| &self.0[..p.len() + 1])
    }

    /// The container a thread belongs to (`p.left` → `p`, `m[2]` → `m`);
    /// `None` for the top level.
    pub fn container(self) -> Option<&'a str> {
        let k = self.0;
        if k.is_empty() {
            return None;
        }
        if k.ends_with(']') {
            return k.rfind('[').map(|i| &k[..i]);
        }
        k.rfind('.').map(|i| &k[..i])
    }

    /// Every prefix whose outputs this path sees, outermost first: `""`,
    /// then each enclosing one (`m[2].n[0].x` → `""`, `m[2].`, `m[2].n[0].`).
    pub fn prefixes(self) -> Vec<&'a str> {
        std::iter::once("").chain(self.prefix().match_indices('.').map(|(i, _)| &self.0[..=i])).collect()
    }

    /// A map iteration's map and index (`m[2]` → (`m`, 2)).
    pub fn iteration(self) -> Option<(&'a str, usize)> {
        let (map, index) = self.0.strip_suffix(']')?.rsplit_once('[')?;
        Some((map, index.parse().ok()?))
    }

    /// The index of the iteration of map `map` this path lies in
    /// (`m[2].price` in `m` → 2).
    pub fn index_in(self, map: &str) -> Option<usize> {
        self.0.strip_prefix(map)?.strip_prefix('[')?.split(']').next()?.parse().ok()
    }

    /// Whether this path lies in an iteration of `map` (`m[2].x` in `m`).
    pub fn in_iteration_of(self, map: &str) -> bool {
        self.0.strip_prefix(map).is_some_and(|r| r.starts_with('['))
    }
}

/// Step `id` at prefix `prefix`: `m[2].` + `price` → `m[2].price`.
pub fn join(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}")
}

/// Iteration `i` of map instance `map`: `m[2]`.
pub fn iteration(map: &str, i: usize) -> String {
    format!("{map}[{i}]")
}

/// The prefix of the steps in iteration `i` of `map`: `m[2].`.
pub fn iteration_prefix(map: &str, i: usize) -> String {
    format!("{map}[{i}].")
}

/// The two prefixes every path inside container `instance` starts with:
/// its branches (`p.`) and its iterations (`p[`).
pub fn inside(instance: &str) -> (String, String) {
    (format!("{instance}."), format!("{instance}["))
}

/// The prefix every iteration of `map` starts with: `m[`.
pub fn iterations_of(map: &str) -> String {
    format!("{map}[")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_and_join() {
        let p = InstancePath::new("m[2].n[10].price");
        assert_eq!((p.step(), p.prefix()), ("price", "m[2].n[10]."));
        assert_eq!(InstancePath::new("review").prefix(), "");
        assert_eq!(InstancePath::new("review").step(), "review");
        assert_eq!(InstancePath::new("m[2]").container(), Some("m"));
        assert_eq!(InstancePath::new("p.left").container(), Some("p"));
        assert_eq!(InstancePath::new("").container(), None);
        assert_eq!(InstancePath::new("m[12]").iteration(), Some(("m", 12)));
        assert_eq!(InstancePath::new("m[2].n[3]").iteration(), Some(("m[2].n", 3)));
        assert_eq!(InstancePath::new("m[x]").iteration(), None);
        assert_eq!(InstancePath::new("m[2].price").index_in("m"), Some(2));
        assert_eq!(InstancePath::new("mm[2].price").index_in("m"), None);
        assert!(InstancePath::new("m[0].x").in_iteration_of("m"));
        assert!(!InstancePath::new("m.x").in_iteration_of("m"));
        assert_eq!(p.prefixes(), ["", "m[2].", "m[2].n[10]."]);
        assert_eq!(InstancePath::new("x").prefixes(), [""]);
        assert_eq!(join("m[2].", "price"), "m[2].price");
        assert_eq!(iteration("m", 3), "m[3]");
        assert_eq!(InstancePath::new(&iteration_prefix("m", 3)).prefix(), "m[3].");
        assert_eq!(inside("p"), ("p.".to_owned(), "p[".to_owned()));
        assert_eq!(iterations_of("m"), "m[");
    }
}
