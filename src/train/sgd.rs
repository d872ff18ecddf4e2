//! torch.optim.SGD (momentum, dampening 0, no Nesterov, coupled weight decay), written over the
//! store's tensors so that its momentum buffers can be checkpointed: tch's optimizer wraps
//! libtorch's C++ one, whose state is not reachable from Rust.

use std::collections::BTreeMap;

use tch::{Tensor, nn};

pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    /// Momentum buffers by variable name; absent until a variable's first step, as in torch.
    pub buffers: BTreeMap<String, Tensor>,
    params: Vec<(String, Tensor)>,
}

impl Sgd {
    pub fn new(vs: &nn::VarStore, momentum: f64, weight_decay: f64) -> Sgd {
        let params = vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect::<BTreeMap<_, _>>();
        Sgd { momentum, weight_decay, buffers: BTreeMap::new(), params: params.into_iter().collect() }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// A loss of 0 over every parameter: its backward gives each one a defined zero gradient
    /// (a data-parallel rank without images still joins the average and the update).
    pub fn zero_loss(&self) -> Tensor {
        let parts: Vec<Tensor> = self.params.iter().map(|(_, p)| p.sum(p.kind()) * 0.0).collect();
        Tensor::stack(&parts, 0).sum(tch::Kind::Float)
    }

    /// The gradients, e.g. to check them or to unscale them.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect()
    }

    /// One step: d = g + wd * p; buf = momentum * buf + d (buf = d at first); p -= lr * buf.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for (name, p) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if self.weight_decay != 0.0 { &g + &*p * self.weight_decay } else { g.shallow_clone() };
                if self.momentum != 0.0 {
                    let buf = match self.buffers.get_mut(name) {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                            b.shallow_clone()
                        }
                        None => {
                            let b = d.detach().copy();
                            self.buffers.insert(name.clone(), b.shallow_clone());
                            b
                        }
                    };
                    d = buf;
                }
                let _ = p.g_sub_(&(d * lr));
            }
        })
    }
}
