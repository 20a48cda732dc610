//! A per-session map from type to value: plugins share data across phases
//! (and with each other) by type, so two plugins cannot collide unless they
//! mean to share a type. Empty until a plugin stores something.

use std::any::{Any, TypeId};

/// Values keyed by their type, kept until the session ends (then dropped,
/// which is how a plugin releases what it counted).
#[derive(Default)]
pub struct Ctx {
    items: Vec<(TypeId, Box<dyn Any + Send + Sync>)>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("items", &self.items.len()).finish()
    }
}

impl Ctx {
    /// Stores `value`, replacing any earlier value of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        self.items.retain(|(t, _)| *t != id);
        self.items.push((id, Box::new(value)));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.items.iter().find(|(t, _)| *t == id).and_then(|(_, v)| v.downcast_ref())
    }

    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.items.iter_mut().find(|(t, _)| *t == id).and_then(|(_, v)| v.downcast_mut())
    }

    /// The value of type `T`, made with `Default` if there is none yet.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        if self.get::<T>().is_none() {
            self.insert(T::default());
        }
        match self.get_mut::<T>() {
            Some(v) => v,
            None => unreachable!("inserted just above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_type_and_replaced() {
        let mut c = Ctx::default();
        assert!(c.get::<u32>().is_none());
        c.insert(5u32);
        c.insert(String::from("a"));
        c.insert(7u32);
        assert_eq!(c.get::<u32>(), Some(&7));
        assert_eq!(c.get::<String>().map(String::as_str), Some("a"));
        c.get_or_default::<Vec<u8>>().push(1);
        c.get_or_default::<Vec<u8>>().push(2);
        assert_eq!(c.get::<Vec<u8>>(), Some(&vec![1, 2]));
    }
}
