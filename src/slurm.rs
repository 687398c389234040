//! `runner slurm`: an sbatch job-array script in which array task I runs shard I of N of a
//! recipe's trials (`--shard I/N`), each into its own results folder; `runner merge` then
//! combines them.

use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct ArrayJob {
    pub name: String,
    /// Array tasks (shards).
    pub tasks: usize,
    /// At most this many tasks at once.
    pub parallelism: Option<usize>,
    /// The folder the tasks run in (where the recipe's relative paths resolve).
    pub workdir: PathBuf,
    /// The runner binary.
    pub exe: PathBuf,
    /// Arguments after the binary: the recipe, --results, --set, --seed, --device, --trust.
    pub args: Vec<String>,
    /// Where each task's stdout/stderr go.
    pub log_dir: PathBuf,
    /// Extra sbatch options, each written as an `#SBATCH` line.
    pub sbatch_options: Vec<String>,
}

/// Quotes a word for bash: single quotes, with `'` written as `'\''`.
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl ArrayJob {
    pub fn validate(&self) -> Result<(), String> {
        if self.tasks == 0 {
            return Err("the recipe declares no trials: nothing to run on Slurm".into());
        }
        if self.parallelism == Some(0) {
            return Err("--array-parallelism must be at least 1".into());
        }
        if let Some(bad) = self
            .sbatch_options
            .iter()
            .find(|o| !o.starts_with('-') || o.contains('\n'))
        {
            return Err(format!(
                "'{bad}' is not an sbatch option (they start with '-', e.g. --partition=gpu)"
            ));
        }
        Ok(())
    }

    pub fn script(&self) -> String {
        let last = self.tasks - 1;
        let array = match self.parallelism {
            Some(k) => format!("0-{last}%{k}"),
            None => format!("0-{last}"),
        };
        let mut s = String::from("#!/bin/bash\n");
        s.push_str("# Written by `runner slurm`. Each array task runs one shard of the recipe's trials into\n");
        s.push_str("# RESULTS/<sweep>/shards/I-of-N/; afterwards `runner merge RESULTS/<sweep>` combines them.\n");
        s.push_str(&format!("#SBATCH --job-name={}\n", shell_quote(&self.name)));
        s.push_str(&format!("#SBATCH --array={array}\n"));
        s.push_str(&format!(
            "#SBATCH --output={}\n",
            self.log_dir.join("%x-%A_%a.out").display()
        ));
        for o in &self.sbatch_options {
            s.push_str(&format!("#SBATCH {o}\n"));
        }
        s.push_str("set -euo pipefail\n");
        s.push_str(&format!(
            "cd {}\n",
            shell_quote(&self.workdir.to_string_lossy())
        ));
        let args: Vec<String> = self.args.iter().map(|a| shell_quote(a)).collect();
        s.push_str(&format!(
            "exec {} {} --shard \"${{SLURM_ARRAY_TASK_ID}}/{}\"\n",
            shell_quote(&self.exe.to_string_lossy()),
            args.join(" "),
            self.tasks
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_runs_one_shard_per_task() {
        let job = ArrayJob {
            name: "rank sweep".into(),
            tasks: 4,
            parallelism: Some(2),
            workdir: "/work dir".into(),
            exe: "/bin/runner".into(),
            args: vec!["recipes/x.lua".into(), "--set".into(), "note=it's".into()],
            log_dir: "results/slurm".into(),
            sbatch_options: vec!["--time=1:00:00".into()],
        };
        job.validate().unwrap();
        let s = job.script();
        assert!(s.contains("#SBATCH --array=0-3%2\n"), "{s}");
        assert!(s.contains("#SBATCH --job-name='rank sweep'\n"));
        assert!(s.contains("#SBATCH --time=1:00:00\n"));
        assert!(s.contains("cd '/work dir'\n"));
        assert!(s.contains(r#"exec /bin/runner recipes/x.lua --set 'note=it'\''s' --shard "${SLURM_ARRAY_TASK_ID}/4""#), "{s}");
        let bad = ArrayJob {
            sbatch_options: vec!["partition=gpu".into()],
            ..job.clone()
        };
        assert!(bad.validate().unwrap_err().contains("not an sbatch option"));
        assert!(ArrayJob { tasks: 0, ..job }.validate().is_err());
    }
}
