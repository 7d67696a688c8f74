// The `espalier` command-line host.

import ArgumentParser
import CEspalierSystem
import EspalierCore
import Foundation

@main
struct Espalier: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "espalier",
        abstract: "Neural architecture search inside a memory budget.",
        version: version,
        subcommands: [SearchCommand.self, MemoryCommand.self, TrainCommand.self, TrainPrunedCommand.self, EvalCommand.self, ExportCommand.self,
                      TrainBaselineCommand.self, CompareCommand.self, PluginsCommand.self, BenchCommand.self, KernelBenchCommand.self, ScanPluginCommand.self])

    /// Espalier's version (`espalier --version`, and the metadata of the ONNX models it writes);
    /// its minor follows the plugin ABI's.
    static let version = "0.6.0"

    /// Parses, then runs. A mistake found while parsing the command line gets the usage; an error
    /// while running (a bad config, data or plugin, even one reported as a ValidationError) is one
    /// clear line without it.
    /// Set by `espalier compare` for its children: the pid of the process they must not outlive.
    static let dieWithParentVariable = "ESPALIER_DIE_WITH_PARENT"

    static func main() {
        if let parent = ProcessInfo.processInfo.environment[dieWithParentVariable].flatMap(Int32.init) {
            unsetenv(dieWithParentVariable)   // for this process only, not for a worker it starts
            if espalier_die_with_parent(parent) != 0 { Foundation.exit(1) }   // it is gone already
        }
        var command: ParsableCommand
        do { command = try parseAsRoot() } catch { exit(withError: error) }
        do { try command.run() } catch let e as ValidationError {
            FileHandle.standardError.write(Data("Error: \(e.message)\n".utf8))
            Foundation.exit(ExitCode.validationFailure.rawValue)
        } catch { exit(withError: error) }
        exit()
    }
}
