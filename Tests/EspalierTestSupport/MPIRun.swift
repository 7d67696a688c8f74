// `mpirun -np N espalier …` for the tests of a search on several ranks: Open MPI's mpirun from
// PATH (a missing one is a Prerequisite: a failure under CI, where .ci/install installs it), with
// what this machine needs: --oversubscribe (more ranks than cores), --bind-to none (our own
// threads), --allow-run-as-root in containers, and no single-copy transport (containers forbid
// the ptrace it needs).

import Foundation

public enum MPIRun {
    /// mpirun's path, or a Prerequisite.missing error.
    public static func mpirun() throws -> String {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            let p = "\(dir)/mpirun"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        throw Prerequisite.missing("Open MPI's mpirun is not on PATH (apt-get install openmpi-bin libopenmpi-dev; .ci/install does)")
    }

    /// The arguments before the program: `-np N` and this machine's settings.
    public static func launcherArguments(ranks: Int) -> [String] {
        ["--oversubscribe", "--bind-to", "none"] + (getuid() == 0 ? ["--allow-run-as-root"] : []) + ["-np", String(ranks)]
    }

    public static let environment = ["OMPI_MCA_btl_vader_single_copy_mechanism": "none", "OMPI_MCA_rmaps_base_oversubscribe": "1"]

    /// Starts `mpirun -np ranks espalier args…` in `cwd`.
    public static func start(ranks: Int, _ args: [String], cwd: String, environment extra: [String: String] = [:]) throws -> EspalierProcess {
        try EspalierProcess(launcherArguments(ranks: ranks) + [try Prerequisite.espalierBinary()] + args, cwd: cwd,
                            environment: environment.merging(extra) { $1 }, executable: try mpirun())
    }

    /// Runs it to the end: status and output (every rank's, merged).
    public static func run(ranks: Int, _ args: [String], cwd: String, environment extra: [String: String] = [:],
                           timeout: Double = 300) throws -> (status: Int32, output: String) {
        let p = try start(ranks: ranks, args, cwd: cwd, environment: extra)
        let status = p.wait(timeout: timeout)
        return (status, p.output)
    }
}
