mod cli;

use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use runner::backend::{dispatch, DeviceKind, WithBackend};
use runner::lua::{run_recipe, RecipeFailure, RecipeOptions, RecipeReport};

/// Exit codes: 0 all good, 1 some trials failed, 2 usage, recipe or device error.
const EXIT_TRIALS_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

struct RunRecipe(RecipeOptions);

impl WithBackend for RunRecipe {
    type Output = Result<RecipeReport, RecipeFailure>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        run_recipe::<B>(&self.0, device)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    let Some(recipe) = args.recipe.clone() else {
        let _ = Cli::command().print_help();
        eprintln!("\nerror: no recipe given (try `runner recipes/quickstart.lua`)");
        return ExitCode::from(EXIT_USAGE);
    };
    if let Err(e) = std::fs::metadata(&recipe) {
        eprintln!("error: cannot read recipe {}: {e}", recipe.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let opts = RecipeOptions { path: recipe, params: args.set, seed: args.seed, results_dir: args.results, device: args.device };
    match dispatch(args.device, RunRecipe(opts)) {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Ok(Err(failure)) => {
            eprintln!("error: {failure}");
            ExitCode::from(EXIT_USAGE)
        }
        Ok(Ok(report)) if report.trials_failed > 0 => {
            eprintln!("{} of {} trial(s) failed", report.trials_failed, report.trials_run);
            ExitCode::from(EXIT_TRIALS_FAILED)
        }
        Ok(Ok(_)) => ExitCode::SUCCESS,
    }
}
