// `espalier scan-plugin PATH`: the child process of an out-of-process plugin scan
// (EspalierHost/PluginScanner.swift). It loads the one library in this process — dlopen, entry,
// ABI check, description, parameter validation, init — and prints its verdict as one marked
// JSON line. If the library crashes, exits or hangs, this process dies instead of the host.

import ArgumentParser
import EspalierHost
import Foundation

struct ScanPluginCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scan-plugin", abstract: "Scan one plugin library (the host runs this in a child process).", shouldDisplay: false)

    @Argument(help: "The library to scan.") var path: String
    @Option(help: "The host's ABI, MAJOR.MINOR.") var abi: String?
    @Option(help: "The oldest minor the host accepts.") var minimumMinor: UInt32 = 0

    func run() throws {
        let parts = (abi ?? "").split(separator: ".").compactMap { UInt32($0) }
        let loader = parts.count == 2 ? PluginLoader(context: HostContext(), hostMajor: parts[0], hostMinor: parts[1], minimumMinor: minimumMinor)
                                      : PluginLoader(context: HostContext(), minimumMinor: minimumMinor)
        loader.scanner = nil
        let registry = PluginRegistry()
        let result: PluginScanResult
        if let library = loader.load(file: path, into: registry) {
            result = PluginScanResult(ok: true, components: library.components.map(\.id))
        } else {
            result = PluginScanResult(ok: false, reason: registry.failures.first?.reason ?? "refused")
        }
        let json = String(decoding: try JSONEncoder().encode(result), as: UTF8.self)
        print(PluginScanResult.marker + json)
        fflush(stdout)
    }
}
