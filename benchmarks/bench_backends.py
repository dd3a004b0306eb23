"""Which backend and precision is fastest for each task on this machine? (`xvlm_edge.bench`, shipped in the
package as the `xvlm-edge bench` verb; this script is the same command for a source checkout.)"""

import sys

from xvlm_edge.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
