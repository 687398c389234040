//! Named adapters: every place in the model that an adapter can occupy holds a list of named
//! entries, at most one of them active. Switching the active adapter (or disabling all of them
//! to get the base model back) flips the flags; the tensors stay where they are.

use burn::prelude::*;

use crate::model::params::{Param, ParamVisitor, SetTrainable};

/// The parameters of one adapter at one place of the model.
pub(crate) trait Part<B: Backend> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V);

    /// The parameters that train while the adapter is active: all of them, unless the part
    /// carries frozen tensors of its own (intrinsic prompt tuning's decoder).
    fn visit_trainable<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        self.visit(prefix, v);
    }
}

impl<B: Backend> Part<B> for Param<B, 1> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit1(prefix, self);
    }
}

impl<B: Backend> Part<B> for Param<B, 2> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(prefix, self);
    }
}

#[derive(Clone, Debug)]
pub struct Named<T> {
    pub name: String,
    pub active: bool,
    pub inner: T,
}

#[derive(Clone, Debug)]
pub struct Slots<T>(pub Vec<Named<T>>);

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Slots<T> {
    /// The active entry, if any.
    pub fn active(&self) -> Option<&T> {
        self.0.iter().find(|n| n.active).map(|n| &n.inner)
    }

    pub fn active_mut(&mut self) -> Option<&mut T> {
        self.0.iter_mut().find(|n| n.active).map(|n| &mut n.inner)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|n| n.name == name).map(|n| &n.inner)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        self.0
            .iter_mut()
            .find(|n| n.name == name)
            .map(|n| &mut n.inner)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds an inactive entry (the caller activates adapters model-wide).
    pub(crate) fn insert(&mut self, name: &str, inner: T) {
        self.0.retain(|n| n.name != name);
        self.0.push(Named {
            name: name.to_string(),
            active: false,
            inner,
        });
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.0.retain(|n| n.name != name);
    }

    /// Visits each entry's parameters as `{prefix}.{kind}[{adapter}]{suffix}`: the brackets
    /// mark the adapter name unambiguously (see `peft::format::save_adapter`).
    pub(crate) fn visit<B: Backend, V: ParamVisitor<B>>(
        &mut self,
        prefix: &str,
        kind: &str,
        v: &mut V,
    ) where
        T: Part<B>,
    {
        for n in &mut self.0 {
            n.inner.visit(&format!("{prefix}.{kind}[{}]", n.name), v);
        }
    }

    /// Makes `name` the active entry (none when `None`); only the active entry trains.
    pub(crate) fn activate<B: Backend>(&mut self, name: Option<&str>)
    where
        T: Part<B>,
    {
        for n in &mut self.0 {
            n.active = Some(n.name.as_str()) == name;
            n.inner.visit_trainable("", &mut SetTrainable(n.active));
        }
    }
}
