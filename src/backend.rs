//! Choosing the compute backend at run time: one `match` on `--device` starts a session
//! monomorphised for `Autodiff<Flex>`, `Autodiff<Wgpu>` or `Autodiff<Cuda>`, after a probe
//! that turns "no such device" into an error instead of a panic inside Burn.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Flex,
    Wgpu,
    Cuda,
}

impl FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "flex" | "cpu" => Ok(Self::Flex),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!(
                "unknown device '{other}' (expected flex, wgpu or cuda)"
            )),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "this runner was built without the `{0}` feature; rebuild with `cargo build --release --features {0}`"
    )]
    NotBuilt(DeviceKind),
    #[error("device {kind} is not usable on this machine: {reason}")]
    Unavailable { kind: DeviceKind, reason: String },
}

/// Work to run on whichever backend the user picked.
pub trait WithBackend {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> Self::Output;
}

/// Probes the chosen device, then runs `work` on it.
pub fn dispatch<W: WithBackend>(kind: DeviceKind, work: W) -> Result<W::Output, DeviceError> {
    match kind {
        DeviceKind::Flex => {
            #[cfg(feature = "flex")]
            {
                let device = burn::backend::flex::FlexDevice;
                probe::<burn::backend::Flex>(kind, &device)?;
                Ok(work.run::<burn::backend::Autodiff<burn::backend::Flex>>(device, kind))
            }
            #[cfg(not(feature = "flex"))]
            Err(DeviceError::NotBuilt(kind))
        }
        DeviceKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
                probe::<burn::backend::Wgpu>(kind, &device)?;
                Ok(work.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(device, kind))
            }
            #[cfg(not(feature = "wgpu"))]
            Err(DeviceError::NotBuilt(kind))
        }
        DeviceKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let device = burn::backend::cuda::CudaDevice::default();
                probe::<burn::backend::Cuda>(kind, &device)?;
                Ok(work.run::<burn::backend::Autodiff<burn::backend::Cuda>>(device, kind))
            }
            #[cfg(not(feature = "cuda"))]
            Err(DeviceError::NotBuilt(kind))
        }
    }
}

/// Runs a tiny computation on the device. Burn panics when a device cannot be initialised
/// (no Vulkan driver, no CUDA library or GPU), sometimes in a runtime thread of its own; the
/// panics are caught here, silenced, and their first message returned as the reason.
pub(crate) fn probe<B: Backend>(kind: DeviceKind, device: &B::Device) -> Result<(), DeviceError> {
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let previous = std::panic::take_hook();
    {
        let messages = messages.clone();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            if let Ok(mut m) = messages.lock() {
                // cudarc's message lists every library name it tried: keep the sentence only.
                let first = msg.lines().next().unwrap_or_default();
                m.push(
                    first
                        .split(" - searched for")
                        .next()
                        .unwrap_or(first)
                        .to_string(),
                );
            }
        }));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = Tensor::<B, 1>::ones([4], device) * 2.0;
        t.into_data().to_vec::<f32>().map(|v| v.iter().sum::<f32>())
    }));
    std::panic::set_hook(previous);
    let first_panic = messages.lock().ok().and_then(|m| m.first().cloned());
    let hint = match kind {
        DeviceKind::Cuda => " (is there an NVIDIA GPU with its driver, libcuda, installed?)",
        DeviceKind::Wgpu => {
            " (is there a Vulkan/Metal driver? On Debian, Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)"
        }
        DeviceKind::Flex => "",
    };
    let unavailable = |reason: String| DeviceError::Unavailable {
        kind,
        reason: format!("{reason}{hint}"),
    };
    match result {
        Ok(Ok(8.0)) => Ok(()),
        Ok(Ok(sum)) => Err(unavailable(format!("probe computed {sum}, expected 8"))),
        Ok(Err(e)) => Err(unavailable(format!("{e:?}"))),
        Err(_) => {
            Err(unavailable(first_panic.unwrap_or_else(|| {
                "the backend failed to initialise".into()
            })))
        }
    }
}
