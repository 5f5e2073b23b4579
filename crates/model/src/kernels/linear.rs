//! A linear layer `x @ W' + b` whose backward skips the weight gradient when the weight is
//! frozen (candle's matmul backward always computes both sides, which is pure waste for the
//! frozen base weights under LoRA), with the bias add fused into the matmul.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::gemm::{MatMut, MatRef, matmul};
use super::{Real, threads, unsupported};

/// How a weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in, out]`: GPT-2's `Conv1D` (`y = x W`).
    InOut,
    /// `[out, in]`: `torch.nn.Linear`, Llama, and tied embeddings (`y = x W^T`).
    OutIn,
}

/// `x @ W' (+ b)` for `x` of any rank (the last dimension is the input features).
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: WeightLayout,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let (k, n) = match (layout, w.dims2()?) {
        (WeightLayout::InOut, (i, o)) => (i, o),
        (WeightLayout::OutIn, (o, i)) => (i, o),
    };
    let Some((&last, lead)) = dims.split_last() else {
        candle_core::bail!("linear: input must have at least one dimension");
    };
    if last != k {
        candle_core::bail!("linear: input has {last} features, weight expects {k}");
    }
    let m: usize = lead.iter().product();
    let x2 = x.reshape((m, k))?;
    let y = if x.device().is_cpu() {
        let op = Linear { layout };
        match b {
            Some(b) => x2.apply_op3(w, b, op)?,
            None => x2.apply_op2(w, op)?,
        }
    } else {
        super::reference::linear(&x2, w, b, layout)?
    };
    let mut out = lead.to_vec();
    out.push(n);
    y.reshape(out)
}

#[derive(Debug, Clone, Copy)]
struct Linear {
    layout: WeightLayout,
}

/// A 2-D layout as a strided view (any strides; no copy).
fn view<'a, T>(data: &'a [T], l: &Layout) -> candle_core::Result<MatRef<'a, T>> {
    let (r, c) = l.shape().dims2()?;
    let s = l.stride();
    Ok(MatRef {
        data,
        off: l.start_offset(),
        rows: r,
        cols: c,
        rs: s[0],
        cs: s[1],
    })
}

impl Linear {
    fn run<T: Real>(
        &self,
        x: &[T],
        lx: &Layout,
        w: &[T],
        lw: &Layout,
        b: Option<(&[T], &Layout)>,
    ) -> candle_core::Result<(Vec<T>, Shape)> {
        let xv = view(x, lx)?;
        let wv = match self.layout {
            WeightLayout::InOut => view(w, lw)?,
            WeightLayout::OutIn => view(w, lw)?.t(),
        };
        let (m, n) = (xv.rows, wv.cols);
        let mut y = vec![T::ZERO; m * n];
        let accumulate = match b {
            Some((b, lb)) => {
                if lb.shape().elem_count() != n {
                    candle_core::bail!(
                        "linear: bias has {} elements, expected {n}",
                        lb.shape().elem_count()
                    );
                }
                let st = lb.stride().last().copied().unwrap_or(1);
                let off = lb.start_offset();
                for row in y.chunks_mut(n) {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = b[off + j * st];
                    }
                }
                true
            }
            None => false,
        };
        matmul(
            MatMut::rows(&mut y, 0, m, n, n),
            xv,
            wv,
            T::ONE,
            accumulate,
            threads(),
        )?;
        Ok((y, Shape::from((m, n))))
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            Some(match self.layout {
                WeightLayout::InOut => g.matmul(&w.t()?)?,
                WeightLayout::OutIn => g.matmul(w)?,
            })
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(match self.layout {
                WeightLayout::InOut => x.t()?.matmul(g)?,
                WeightLayout::OutIn => g.t()?.matmul(x)?,
            })
        } else {
            None
        };
        Ok((dx, dw))
    }
}

macro_rules! dispatch {
    ($self:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident, $b:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                let b = match $b {
                    Some((CpuStorage::F32(b), l)) => Some((b.as_slice(), l)),
                    Some((s, _)) => return Err(unsupported("cohort-linear", s)),
                    None => None,
                };
                let (y, s) = $self.run(x, $l1, w, $l2, b)?;
                Ok((CpuStorage::F32(y), s))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                let b = match $b {
                    Some((CpuStorage::F64(b), l)) => Some((b.as_slice(), l)),
                    Some((s, _)) => return Err(unsupported("cohort-linear", s)),
                    None => None,
                };
                let (y, s) = $self.run(x, $l1, w, $l2, b)?;
                Ok((CpuStorage::F64(y), s))
            }
            (s, _) => Err(unsupported("cohort-linear", s)),
        }
    };
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "cohort-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let none: Option<(&CpuStorage, &Layout)> = None;
        dispatch!(self, s1, l1, s2, l2, none)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, g)
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "cohort-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        dispatch!(self, s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, g)?;
        let db = if b.track_op() {
            Some(g.sum(0)?.reshape(b.shape())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}
