//! Saving a device (or any VM component) to plain data and building it again
//! from that data: the one interface snapshots and live migration use.
//!
//! Each component says what its state is (a plain serializable struct,
//! versioned through [`Persist::STATE_VERSION`]), what it needs besides that
//! state to exist again ([`Persist::ConstructorArgs`]: host resources such as
//! an open image, a tap, eventfds, guest memory), and how to check the state
//! before trusting it: [`Persist::restore`] is where a state file written by
//! someone else is validated, so it refuses anything the component could not
//! have produced instead of handing it on to the guest or to KVM.
//!
//! Two departures from the simplest shape, both on purpose:
//! * `save` returns a `Result`: the state of KVM-backed components (VM,
//!   vCPUs) is read with ioctls that can fail;
//! * the trait has a lifetime, so constructor arguments can borrow (the
//!   device manager needs the VM it registers irqfds with; a KVM object is
//!   restored *into* a freshly created one). Device models, whose arguments
//!   own everything, implement `Persist<'static>`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::legacy::serial::{SerialOutput, SerialState};
use crate::legacy::Serial;
use crate::EventFdTrigger;

/// A component that can be saved to plain data and rebuilt from it.
pub trait Persist<'a>: Sized {
    /// The component's whole state as plain, serializable data.
    type State: Serialize + DeserializeOwned;
    /// What restoring needs besides the state (host resources).
    type ConstructorArgs;
    /// Why a state was refused or the component could not be rebuilt.
    type Error: std::fmt::Display;

    /// The version of [`Self::State`]'s layout; bump it when the layout
    /// changes (snapshots record it per section and refuse other versions).
    const STATE_VERSION: u16 = 1;

    /// The component's state (the VM's vCPUs must be paused).
    fn save(&self) -> Result<Self::State, Self::Error>;

    /// Rebuilds the component from `args` and a saved `state`, after
    /// checking the state is one this component could have produced.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

/// What a UART needs besides its registers: its interrupt and its output.
pub struct SerialConstructorArgs {
    /// The irqfd-backed interrupt line.
    pub interrupt: EventFdTrigger,
    /// Where guest output goes.
    pub out: SerialOutput,
}

impl Persist<'_> for Serial {
    type State = SerialState;
    type ConstructorArgs = SerialConstructorArgs;
    type Error = std::io::Error;

    fn save(&self) -> Result<SerialState, std::io::Error> {
        Ok(self.state())
    }

    fn restore(args: SerialConstructorArgs, state: &SerialState) -> Result<Self, std::io::Error> {
        Serial::from_state(state, args.interrupt, args.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    #[test]
    fn serial_round_trip_keeps_registers_and_pending_input() {
        let irq = EventFdTrigger::new().unwrap();
        let mut uart = Serial::new(irq, Box::new(std::io::sink()));
        // LCR = 0x03 (8N1), scratch = 0x5a, IER = 0x01.
        uart.write(0, 3, &[0x03]);
        uart.write(0, 7, &[0x5a]);
        uart.write(0, 1, &[0x01]);
        let saved = uart.save().unwrap();
        let args = SerialConstructorArgs {
            interrupt: EventFdTrigger::new().unwrap(),
            out: Box::new(std::io::sink()),
        };
        let restored = Serial::restore(args, &saved).unwrap();
        assert_eq!(restored.save().unwrap(), saved);
        assert_eq!(saved.scratch, 0x5a);
        assert_eq!(saved.line_control, 0x03);
    }
}
