//! Helpers shared by the integration tests.

use burn::prelude::*;

use runner::model::init;
use runner::model::params::{Param, ParamVisitor};

/// Sets every trainable parameter to deterministic non-trivial values, as training would.
pub struct Perturb(pub u64);
impl<Bk: Backend> ParamVisitor<Bk> for Perturb {
    fn visit1(&mut self, _: &str, p: &mut Param<Bk, 1>) {
        if p.trainable {
            self.0 += 1;
            let noise = init::normal_vec(&mut init::rng(self.0), p.numel(), 0.1);
            let t = p.value.clone().detach() + init::tensor1::<Bk>(noise, &p.value.device());
            *p = Param::new(t, true);
        }
    }
    fn visit2(&mut self, _: &str, p: &mut Param<Bk, 2>) {
        if p.trainable {
            self.0 += 1;
            let dims = p.value.dims();
            let noise = init::normal_vec(&mut init::rng(self.0), p.numel(), 0.1);
            let t = p.value.clone().detach() + init::tensor2::<Bk>(noise, dims, &p.value.device());
            *p = Param::new(t, true);
        }
    }
}
