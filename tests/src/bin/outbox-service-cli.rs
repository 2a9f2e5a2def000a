//! The `outbox` command line as a service ships it: in its own binary, with its catalog
//! (`outbox catalog` refuses to run where no event is linked, as in `outbox-cli`).

use outbox_seaorm::catalog::Catalog;
use outbox_tests::fixtures::{Numbered, OrderCancelled, OrderConfirmed, OrderPlaced};

fn main() -> std::process::ExitCode {
    outbox_seaorm::cli::main_with_catalog(
        Catalog::new()
            .event::<OrderPlaced>()
            .event::<OrderConfirmed>()
            .event::<OrderCancelled>()
            .event::<Numbered>(),
    )
}
