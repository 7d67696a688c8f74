// `espalier search` on several ranks (mpirun -np N espalier search …): where this process is
// (mpirun's environment), starting MPI in the process that does the work (the supervised worker,
// or the process itself with --no-supervise; never the supervisor, which forks), work that only
// rank 0 does with the output folder (its outcome sent to every rank, so that all go on or all
// stop with the same error), and how a rank ends: normally every rank finishes MPI; a rank that
// fails on its own ends the whole job (MPI_Abort) so that no rank waits forever in an exchange.
// Ranks other than 0 print nothing on standard output (mpirun merges the ranks' outputs).

import ArgumentParser
import EspalierCore
import Foundation

enum RankRuntime {
    /// mpirun's place for this process, nil without mpirun.
    static var place: (rank: Int, size: Int)? { MPICommunicator.launchedPlace() }

    /// "rank 1 of 3: " under mpirun, "" otherwise (for messages on standard error).
    static var prefix: String { place.map { "rank \($0.rank) of \($0.size): " } ?? "" }

    /// The ranks of this process: MPI under mpirun (rank 0 of 1 under `mpirun -np 1` as well),
    /// one process otherwise.
    static func start() throws -> Communicator {
        guard place != nil else { return SingleProcess() }
        let ranks = try MPICommunicator()
        if !ranks.isRoot { _ = freopen("/dev/null", "w", stdout) }
        return ranks
    }

    /// Runs `body` on every rank; a rank's error ends the job on every rank (MPI_Abort, after
    /// saying which rank and why), except the outcomes every rank reaches together (an agreed
    /// interrupt, a divergence of the global loss), which finish MPI and leave with their code.
    static func run(_ ranks: Communicator, _ body: () throws -> Void) throws {
        guard let mpi = ranks as? MPICommunicator, mpi.isDistributed else {
            defer { (ranks as? MPICommunicator)?.finish() }
            return try body()
        }
        do {
            try body()
            mpi.finish()
        } catch let e as ExitCode {
            // Every rank leaves with it together: an agreed interrupt (130) or divergence (65).
            mpi.finish()
            throw e
        } catch {
            FileHandle.standardError.write(Data("espalier: rank \(mpi.rank) of \(mpi.size) stops the search: \(error)\n".utf8))
            mpi.abort(code: 1)
        }
    }
}

extension Communicator {
    /// Runs `body` on rank 0 only and gives its value (or its error) to every rank: work with the
    /// output folder, which the other ranks never touch (they may run on other machines).
    func onRoot<T: Codable>(_ body: () throws -> T) throws -> T {
        guard isDistributed else { return try body() }
        var outcome = RootOutcome<T>(value: nil, error: nil)
        if isRoot {
            do { outcome.value = try body() } catch { outcome.error = "\(error)" }
        }
        outcome = try broadcast(isRoot ? outcome : nil)
        if let e = outcome.error { throw ValidationError(e) }
        return outcome.value!
    }
}

/// What rank 0 did on its own: its value or its error's text.
struct RootOutcome<T: Codable>: Codable {
    var value: T?
    var error: String?
}
