// A supervised search (and training): `espalier search` / `train` run the work in a worker process (itself, re-run
// with ESPALIER_WORKER set) and survives the worker's death. The worker records each plugin call
// in a shared page (EspalierHost/CallRecorder.swift); if it dies by a signal, the supervisor says
// which plugin, which call, the owner, epoch and step, the signal, the last intact checkpoint and
// the exact --resume command, and exits with `pluginCrashExit`. Ctrl-C: the first is passed on
// (the worker checkpoints and stops after its step, as unsupervised); a second within 5 s ends a
// worker that is still running and names the call it hung in. ESPALIER_SUPERVISE=0 runs
// everything in one process (debugging).

import ArgumentParser
import CEspalierSystem
import EspalierCore
import EspalierHost
import EspalierSearch
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Ctrl-C presses seen by the supervisor (set from the signal handler).
nonisolated(unsafe) var supervisorInterrupts: Int32 = 0
/// SIGUSR1s seen by the supervisor (mpirun passes them on to every rank: a graceful stop).
nonisolated(unsafe) var supervisorStopRequests: Int32 = 0

enum Supervisor {
    /// The exit status of a search whose worker died by a signal (a crashed plugin or host).
    static let pluginCrashExit: Int32 = 70

    /// True in the worker process (and when supervision is off).
    static var isWorker: Bool { ProcessInfo.processInfo.environment["ESPALIER_WORKER"] != nil }
    static var enabled: Bool { !isWorker && ProcessInfo.processInfo.environment["ESPALIER_SUPERVISE"] != "0" }

    /// In the worker: start recording plugin calls into the supervisor's page.
    static func attachWorker() {
        // A worker whose supervisor is gone (killed by mpirun when another rank failed) must not
        // linger, e.g. in an exchange with ranks that no longer exist.
        if let parent = ProcessInfo.processInfo.environment["ESPALIER_SUPERVISOR_PID"].flatMap(Int32.init),
           espalier_die_with_parent(parent) != 0 {
            exit(pluginCrashExit)
        }
        guard let path = ProcessInfo.processInfo.environment["ESPALIER_CALL_RECORD"] else { return }
        CallRecorder.active = CallRecorder.attach(path: path)
    }

    /// Runs this command line again as the worker (with `extraArguments`) and waits; returns only
    /// by throwing the exit code to leave with.
    static func run(extraArguments: [String], outDir: String?) throws -> Never {
        let page = try CallRecorder.create()
        defer { page.remove() }
        var env = ProcessInfo.processInfo.environment
        env[Espalier.dieWithParentVariable] = nil   // the worker dies with this process (attachWorker)
        env["ESPALIER_WORKER"] = "1"
        env["ESPALIER_CALL_RECORD"] = page.path
        env["ESPALIER_SUPERVISOR_PID"] = String(getpid())
        if env["SWIFT_BACKTRACE"] == nil { env["SWIFT_BACKTRACE"] = "enable=no" }   // the report below says what matters
        let args = CommandLine.arguments + extraArguments
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var pid: pid_t = 0
        let cArgs = args.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (cArgs + cEnv).forEach { free($0) } }
        let rc = posix_spawn(&pid, exe, nil, nil, cArgs, cEnv)
        guard rc == 0 else { throw ValidationError("cannot start the search's worker process (\(String(cString: strerror(rc)))); set ESPALIER_SUPERVISE=0 to run in one process") }

        signal(SIGINT) { _ in supervisorInterrupts += 1 }
        signal(SIGUSR1) { _ in supervisorStopRequests += 1 }
        var seen: Int32 = 0, firstPress: Date?, stopsSeen: Int32 = 0
        var status: Int32 = 0
        var killedWhileRunning = false, hung: CallRecorder.Record? = nil
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { break }
            if supervisorStopRequests != stopsSeen {
                stopsSeen = supervisorStopRequests
                kill(pid, SIGUSR1)
            }
            if supervisorInterrupts != seen {
                seen = supervisorInterrupts
                if let t = firstPress, Date().timeIntervalSince(t) <= 5 {
                    // The second Ctrl-C: the worker did not stop after its step; end it.
                    killedWhileRunning = true
                    hung = page.read()
                    kill(pid, SIGKILL)
                } else {
                    firstPress = Date()
                    kill(pid, SIGINT)
                }
            }
            usleep(20_000)
        }
        signal(SIGINT, SIG_DFL)
        if ProcessInfo.processInfo.environment["ESPALIER_SUPERVISE_STATS"] != nil, let r = page.read() {
            FileHandle.standardError.write(Data("espalier: the worker recorded \(r.calls) plugin calls\n".utf8))
        }
        let signalled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
        let sig = status & 0x7f
        let code = (status >> 8) & 0xff
        if killedWhileRunning && signalled {
            report(hung?.inCall == true ? hung : nil, headline: "stopped by a second Ctrl-C while the worker was still running",
                   hanging: true, outDir: outDir)
            throw ExitCode(130)
        }
        if signalled {
            report(page.read(), headline: "the worker process died with \(PluginScanner.signalName(sig))", hanging: false, outDir: outDir)
            throw ExitCode(pluginCrashExit)
        }
        throw ExitCode(code)
    }

    /// One paragraph: what died or hung, where, and how to continue.
    static func report(_ r: CallRecorder.Record?, headline: String, hanging: Bool, outDir: String?) {
        var text = "\nespalier: \(RankRuntime.prefix)\(headline)"
        if let r, r.inCall {
            let plugin = r.what.split(separator: ":").first.map(String.init) ?? r.what
            text += hanging ? ", hung in a call of plugin \(plugin)" : " in a call of plugin \(plugin)"
            text += ": \(r.what) (owner \(r.owner.isEmpty ? "<root>" : r.owner), epoch \(r.epoch + 1), step \(r.step + 1))."
        } else if let r, r.calls > 0 {
            text += ", outside any plugin call (the last one, \(r.what), had returned; epoch \(r.epoch + 1), step \(r.step + 1))."
        } else {
            text += " before any plugin call."
        }
        guard let outDir else {   // `train`: no checkpoint to continue from
            FileHandle.standardError.write(Data((text + " Fix or remove the plugin and train again.\n").utf8))
            return
        }
        if let p = try? SearchRun.checkpointPosition(in: outDir) {
            text += " The last checkpoint, \((outDir as NSString).appendingPathComponent("checkpoint.safetensors")) (\(p.epochsDone) epoch(s) done, step \(p.globalStep)), is intact."
        } else {
            text += " No intact checkpoint was written yet."
        }
        text += (hanging ? " Fix or remove that plugin, then" : " Fix or remove the plugin, then") + " continue with: espalier search --resume \(outDir)"
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}
