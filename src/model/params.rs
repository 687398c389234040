//! Named parameters with a trainable flag, and a visitor over them.
//!
//! The model keeps its weights as plain Burn tensors. A frozen tensor is created without
//! `require_grad`, so the autodiff backend never tracks it and keeps no gradient for it.

use burn::prelude::*;

/// One parameter tensor and whether the optimizer updates it.
#[derive(Clone, Debug)]
pub struct Param<B: Backend, const D: usize> {
    pub value: Tensor<B, D>,
    pub trainable: bool,
}

impl<B: Backend, const D: usize> Param<B, D> {
    /// A parameter (a leaf: detached from any graph) whose autodiff tracking follows `trainable`.
    pub fn new(value: Tensor<B, D>, trainable: bool) -> Self {
        let value = value.detach().set_require_grad(trainable);
        Self { value, trainable }
    }

    pub(crate) fn value(&self) -> &Tensor<B, D> {
        &self.value
    }

    pub fn numel(&self) -> usize {
        self.value.dims().iter().product()
    }

    /// Changes whether the parameter is trained; detaches it from any graph either way.
    pub(crate) fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
        self.value = self.value.clone().detach().set_require_grad(trainable);
    }
}

/// Walks every parameter of a model in a fixed order, with its dotted name
/// (`layers.0.self_attn.q_proj.lora_A`).
pub trait ParamVisitor<B: Backend> {
    fn visit1(&mut self, name: &str, param: &mut Param<B, 1>);
    fn visit2(&mut self, name: &str, param: &mut Param<B, 2>);
    /// A frozen quantized weight (`[out, in]`); most visitors have nothing to do with it.
    fn visit_quantized(
        &mut self,
        _name: &str,
        _weight: &std::sync::Arc<crate::quant::QuantizedTensor>,
    ) {
    }
}

/// Counts parameters: all of them and the trainable ones.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    pub total: usize,
    pub trainable: usize,
}

impl<B: Backend> ParamVisitor<B> for ParamCount {
    fn visit1(&mut self, _name: &str, p: &mut Param<B, 1>) {
        self.add(p.numel(), p.trainable);
    }
    fn visit2(&mut self, _name: &str, p: &mut Param<B, 2>) {
        self.add(p.numel(), p.trainable);
    }
    fn visit_quantized(&mut self, _name: &str, w: &std::sync::Arc<crate::quant::QuantizedTensor>) {
        self.add(w.numel(), false);
    }
}

impl ParamCount {
    fn add(&mut self, n: usize, trainable: bool) {
        self.total += n;
        if trainable {
            self.trainable += n;
        }
    }
}

/// Sets every parameter's trainable flag to one value (freeze or unfreeze a whole model).
pub(crate) struct SetTrainable(pub bool);

impl<B: Backend> ParamVisitor<B> for SetTrainable {
    fn visit1(&mut self, _name: &str, p: &mut Param<B, 1>) {
        p.set_trainable(self.0);
    }
    fn visit2(&mut self, _name: &str, p: &mut Param<B, 2>) {
        p.set_trainable(self.0);
    }
}

/// Copies every parameter to host memory as `(name, shape, values)`; used by tests and
/// by checks that compare weights before and after training.
#[derive(Default)]
pub struct Snapshot {
    pub entries: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Snapshot {
    fn push<B: Backend, const D: usize>(&mut self, name: &str, p: &Param<B, D>) {
        let data = p.value.to_data().convert::<f32>();
        let values = data.to_vec::<f32>().expect("f32 data");
        self.entries
            .push((name.to_string(), p.value.dims().to_vec(), values));
    }

    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.entries
            .iter()
            .find(|e| e.0 == name)
            .map(|e| e.2.as_slice())
    }
}

impl<B: Backend> ParamVisitor<B> for Snapshot {
    fn visit1(&mut self, name: &str, p: &mut Param<B, 1>) {
        self.push(name, p);
    }
    fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
        self.push(name, p);
    }
}
